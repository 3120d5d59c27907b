"""Saving and loading a set model: latent, features, context/batch/dose names, every ensemble
member's weights, the base (a baseline's state) and the kept share of the correction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..utils import json_text
from .latent import LatentSpace
from .perturbation_features import PerturbationFeatures


class SetModelState:
    """Mixin of :class:`~perturbcast.models.set_model.SetModel`: its ``state.npz`` and
    ``training.json``."""

    def _state(self) -> dict[str, np.ndarray]:
        state = {**self.latent.state(), **self.features.state(),
                 "context_names": np.asarray(self.context_names, dtype=str),
                 "batch_names": np.asarray(self.batch_names, dtype=str),
                 "dose_names": np.asarray(list(self.doses), dtype=str),
                 "dose_values": np.asarray(list(self.doses.values()), np.float64),
                 **self._fallback_state()}
        for m, net in enumerate(self.members):  # member 0 as "net.", the others "net1." ...
            for k, v in net.state_dict().items():
                state[f"net{m or ''}.{k}"] = v.detach().cpu().numpy()
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.latent = LatentSpace.from_state(state)
        self.features = PerturbationFeatures.from_state(state, self.keys["separator"],
                                                        self.keys["control"])
        self.context_names = list(state["context_names"].astype(str))
        self.batch_names = list(state["batch_names"].astype(str))
        self.doses = dict(zip(state["dose_names"].astype(str), state["dose_values"].tolist(),
                              strict=True))
        self.members = []
        for m in range(int(self.params["n_seeds"])):
            net = self._new_net(self.latent.dim)
            prefix = f"net{m or ''}."
            net.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in state.items()
                                 if k.startswith(prefix)})
            self.members.append(net.eval())
        self.net = self.members[0]
        self._set_fallback_state(state)

    def _save_extra(self, directory: Path) -> None:
        (directory / "training.json").write_text(json_text(self.training_summary, indent=2))

    def _load_extra(self, directory: Path) -> None:
        f = directory / "training.json"
        self.training_summary = json.loads(f.read_text()) if f.exists() else {}
