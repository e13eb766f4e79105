"""PyTorch predictor: architecture from the project, weights from safetensors bytes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from spark_jobs.model_store import ModelLoadError
from spark_jobs.models import BatchOutput
from spark_jobs.models.torch_nets import build_network

if TYPE_CHECKING:
    from spark_jobs.model_store import ModelVersion

log = logging.getLogger(__name__)

#: per architecture: the (convolution, batch norm) module pairs where the norm only ever reads
#: that convolution's output, found once per process by tracing (see :func:`conv_bn_pairs`)
_PAIRS: dict[str, list[tuple[str, str]]] = {}


def conv_bn_pairs(network: torch.nn.Module) -> list[tuple[str, str]]:
    """Names of every ``Conv2d`` whose output goes only to a ``BatchNorm2d``, with that norm.

    Found from the network's traced graph (``torch.fx``), not from the order of its modules: a
    module defined next to another need not run next to it. A network that cannot be traced
    (data-dependent control flow) gets no pairs: it runs unfolded, as before.
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(network).graph
    except Exception as exc:  # any tracing failure means: leave the network as it is
        log.info("%s cannot be traced (%s): its batch norms stay unfolded", type(network).__name__, exc)
        return []
    modules = dict(network.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), torch.nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        if not isinstance(modules.get(source.target), torch.nn.Conv2d):
            continue
        if calls[str(source.target)] == 1 and calls[str(node.target)] == 1:  # a module called twice is shared: leave it
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batch_norms(network: torch.nn.Module, pairs: list[tuple[str, str]], keep: str | None = None) -> int:
    """Fold each eval-mode batch norm of ``pairs`` into its convolution's weights and bias and
    put an ``Identity`` in its place; module names stay, so a hook on any of them still works.

    A norm at inference is a per-channel scale and shift, so the folded convolution computes the
    same values in one pass (within float32 rounding) instead of writing and reading the whole
    activation twice. ``keep`` names a module whose own output must not change (the manifest's
    embedding layer): a convolution of that name is not folded. Returns how many were folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for conv_name, bn_name in pairs:
        conv, bn = network.get_submodule(conv_name), network.get_submodule(bn_name)
        if conv_name == keep or not isinstance(conv, torch.nn.Conv2d) or not isinstance(bn, torch.nn.BatchNorm2d):
            continue
        if conv.training or bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        _replace(network, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(network, bn_name, torch.nn.Identity())
        folded += 1
    return folded


def _replace(network: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, leaf, module)


class TorchPredictor:
    """Builds the network once; :meth:`forward` runs batches under ``inference_mode``.

    Batch norms that follow a convolution are folded into it when the network is built
    (:func:`fold_batch_norms`; one thread, batches of 32, channels-last: the example CNN at 64 px
    0.64 -> 0.34 ms per image, ResNet-18 at 160 px 18.9-19.1 -> 17.8-18.5). The network runs
    channels-last on every device: on a GPU its convolutions use the tensor
    cores; on a CPU oneDNN's convolutions and pooling are faster that way (one thread, batches of
    32: the example CNN at 64 px 0.97 -> 0.42 ms per image, most of it max-pooling; ResNet-18 at
    160 px 17.9 -> 14.5; ResNet-50 at 224 px 115 -> 83). On ``cuda:<n>`` with
    ``mixed_precision`` it runs under float16 autocast; probabilities are returned as float32.

    :meth:`forward` takes normalised float32 ``N x 3 x H x W`` batches, or (``takes_uint8``)
    8-bit ``N x H x W x 3`` pixels, which it normalises on its device with the manifest's mean
    and std, in the same float32 operations as :func:`spark_jobs.images.normalise`.
    """

    #: forward accepts 8-bit HWC pixels and normalises them itself (the scoring UDF sends them on GPU)
    takes_uint8 = True

    def __init__(
        self,
        version: ModelVersion,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        mixed_precision: bool = False,
    ) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.manifest = version.manifest
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision and self.device.type == "cuda"
        network = build_network(self.manifest.architecture, len(self.manifest.labels))
        try:
            state = load_safetensors(version.weights)
        except Exception as exc:
            raise ModelLoadError(
                f"weights of {self.manifest.name} v{self.manifest.version} are not a readable safetensors file: {exc}"
            ) from exc
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"weights of {self.manifest.name} v{self.manifest.version} do not fit architecture "
                f"{self.manifest.architecture!r} with {len(self.manifest.labels)} labels: {exc}"
            ) from exc
        network.eval()
        architecture = self.manifest.architecture
        if architecture not in _PAIRS:
            _PAIRS[architecture] = conv_bn_pairs(network)
        self.folded = fold_batch_norms(network, _PAIRS[architecture], keep=self.manifest.embedding)
        self.network = network.to(self.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._mean = torch.tensor(self.manifest.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.manifest.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._embedding: torch.Tensor | None = None
        if self.manifest.embedding:
            modules = dict(self.network.named_modules())
            if self.manifest.embedding not in modules:
                raise ModelLoadError(
                    f"embedding layer {self.manifest.embedding!r} of {self.manifest.name} is not a module of "
                    f"{self.manifest.architecture!r}: use one of {sorted(n for n in modules if n)}"
                )
            modules[self.manifest.embedding].register_forward_hook(self._keep_embedding)

    def _keep_embedding(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._embedding = output

    def forward(self, batch: np.ndarray) -> BatchOutput:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if inputs.dtype == torch.uint8:
                if inputs.dim() != 4 or inputs.shape[3] != 3:
                    raise ValueError(f"8-bit batches must be N x H x W x 3, got {tuple(inputs.shape)}")
                # NHWC viewed as NCHW: channels-last strides already, as the network wants on a GPU
                inputs = (inputs.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.mixed_precision):
                outputs = self.network(inputs)
            outputs = outputs.float()
            if self.manifest.output == "logits":
                outputs = torch.softmax(outputs, dim=1)
            embedding = None
            if self._embedding is not None:
                embedding = torch.flatten(self._embedding, 1).float().cpu().numpy()
                self._embedding = None
            return BatchOutput(outputs.cpu().numpy(), embedding)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities only."""
        return self.forward(batch).probabilities
