"""MLflow pyfunc "model from code": a pluto backbone that maps an image batch to embeddings.

MLflow copies this file into the logged model and executes it when the model is loaded, so no
pickled Python object is stored (and MLflow's PyTorch flavour, which saves pt2 programs with a
fixed batch size, is not involved). Input: float32 (B, 3, H, W), already normalised with the
model's pretrained_cfg mean/std. Output: float32 (B, D) embeddings, mode from the model config
("cls" or "cls+mean"). The backbone is the `model_dir` artifact written by
`pluto.models.save_model` and read back with `pluto.models.load_model` (safetensors, no pickle).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PlutoEmbedder(PythonModel):
    def load_context(self, context) -> None:
        from pluto.models import load_model

        self.model = load_model(context.artifacts["model_dir"]).eval()
        config = context.model_config or {}
        self.mode = config.get("embedding_mode", "cls")
        self.patch_size = config.get("patch_size")

    def predict(self, context, model_input, params=None):
        import torch

        from pluto.models import embed

        x = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input, dtype=np.float32)))
        with torch.inference_mode():
            out = embed(self.model, x, mode=self.mode, patch_size=self.patch_size)
        return out.values.float().numpy()


mlflow.models.set_model(PlutoEmbedder())
