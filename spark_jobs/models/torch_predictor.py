"""PyTorch predictor: architecture from the project, weights from safetensors bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from spark_jobs.models.torch_nets import build_network

if TYPE_CHECKING:
    from spark_jobs.model_store import ModelVersion


class TorchPredictor:
    """Builds the network once; :meth:`predict` runs batches under ``inference_mode``."""

    def __init__(self, version: ModelVersion, *, device: str = "cpu", num_threads: int | None = None) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.manifest = version.manifest
        self.device = torch.device(device)
        network = build_network(self.manifest.architecture, len(self.manifest.labels))
        network.load_state_dict(load_safetensors(version.weights))
        self.network = network.eval().to(self.device)
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            outputs = self.network(inputs)
            if self.manifest.output == "logits":
                outputs = torch.softmax(outputs, dim=1)
            return outputs.float().cpu().numpy()
