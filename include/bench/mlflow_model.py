"""The benchmark's models as an MLflow pyfunc, logged "from code" (this file), so the registry
holds the safetensors weights and manifest as artifacts and no model object is ever pickled.

Input: one column of flattened CHW float32 arrays (the decoded images); output: probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class ProbabilitiesModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    def load_context(self, context: Any) -> None:
        from spark_jobs.model_store import Manifest, ModelVersion
        from spark_jobs.models import build_predictor

        manifest = Manifest.from_dict(json.loads(Path(context.artifacts["manifest"]).read_text()))
        weights = Path(context.artifacts["weights"]).read_bytes()
        # One intra-op thread per task, like every other Spark method in the benchmark.
        self.predictor = build_predictor(ModelVersion(manifest, weights), num_threads=1)
        self.shape = (3, manifest.input_size, manifest.input_size)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        # One row per image, one column per class: spark_udf turns the columns into array<float>.
        column = model_input.iloc[:, 0]
        batch = np.stack(column.to_numpy()).astype(np.float32, copy=False).reshape(-1, *self.shape)
        return self.predictor.predict(batch)


mlflow.models.set_model(ProbabilitiesModel())
