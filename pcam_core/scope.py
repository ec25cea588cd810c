"""Out of scope: how far a patch lies from the tissue the model was trained on.

The model only knows lymph-node H&E at about 0.972 µm/px. On anything else (skin, another organ, another
magnification, a pen mark) it still returns a probability, often a confident one. The guard measures,
from the model's own early feature maps, how unlike its training patches a patch is:

- features: for each of the model's `scope_layers` (`pcam_core.models`: the first two stages of the
  compact nets, ResNet's layer1/layer2), the mean and the standard deviation of every channel over the
  patch (the layers where stain, texture and scale live; the last stage's pooled features, the usual
  choice, only know tumour from normal and do not separate skin from lymph node: measured, docs/scope.md);
- score: the Mahalanobis distance of those features from the training patches', with scikit-learn's
  Ledoit-Wolf shrunk covariance (Lee et al. 2018, "A simple unified framework for detecting
  out-of-distribution samples", with feature statistics of early layers);
- threshold: the (1 - rate) quantile of the scores of held-out in-domain patches (rate 5 % by default),
  so that about 5 % of tissue like the training data is flagged, whatever the tissue it is shown.

A patch whose score is above the threshold is out of scope: its call is "refer", never "tumour" or
"normal". The statistics are fitted when a run finishes (on its training and validation patches) and
shipped with the bundled model; they are kept in `scope.npz` in the run folder (`RunDir.scope_path`).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .fileio import atomic_write_with
from .models import get_layer, get_spec
from .transforms import eval_preset

FLAG_RATE = 0.05  # the share of held-out in-domain patches the threshold flags
SCOPE_FORMAT = "pcam_core.scope/1"


def no_guard_warning(run: str) -> str:
    """What every face says when the model scoring patches has no guard (a run with too few validation patches to fit
    one): nothing was checked, and how to fit one."""
    return (f"{run} has no out-of-scope guard, so no patch was checked: tissue unlike its training patches (another "
            f"organ or stain, blank glass) gets a call like any other; `pcam scope --run {run}` fits one (docs/scope.md)")


class TapFull(Exception):
    """Raised out of a forward pass by a `FeatureTap(stop=True)` once it holds every scope layer's features."""


class FeatureTap:
    """Forward hooks on a model's scope layers: `take()` returns, per patch, every layer's channel means and
    standard deviations over space, concatenated in layer order, so the guard's score comes from the same
    forward pass as the probability."""

    def __init__(self, model: nn.Module, layers: Sequence[str], *, stop: bool = False) -> None:
        """`stop`: end each forward pass as soon as every scope layer has run (`TapFull`), when only the features are
        wanted: the layers after them and the head are not computed."""
        if not layers:
            raise ValueError("this model names no scope layers (ModelSpec.scope_layers); it has no out-of-scope guard")
        self.layers = tuple(layers)
        self.stop = stop
        self._latest: dict[str, torch.Tensor] = {}
        self._handles = [get_layer(model, name).register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if name in self._latest:  # the first pass since `take` counts: with TTA, the untransformed view
                return
            out = output.detach().float()
            self._latest[name] = torch.cat([out.mean(dim=(2, 3)), out.std(dim=(2, 3), correction=0)], dim=1)
            if self.stop and len(self._latest) == len(self.layers):
                raise TapFull
        return keep

    def take(self) -> np.ndarray:
        """The features of the first forward pass since the last `take` (B, D) float64: with test-time
        augmentation (`inference.predict_batch`), those of the untransformed view, which comes first."""
        missing = [n for n in self.layers if n not in self._latest]
        if missing:
            raise RuntimeError(f"no forward pass went through {missing} since the tap was set")
        features = torch.cat([self._latest[n] for n in self.layers], dim=1).double().cpu().numpy()
        self._latest.clear()
        return features

    def clear(self) -> None:
        """Forget the features of passes not taken (a dense pass over a region also runs through the layers)."""
        self._latest.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_scope(path: str | Path) -> ScopeModel | None:
    """The guard kept at `path`, or None when there is none."""
    return ScopeModel.load(path) if Path(path).exists() else None


def tap_for(model: nn.Module, model_name: str, *, stop: bool = False) -> FeatureTap:
    """A `FeatureTap` on the scope layers of a registered model (`stop`: see `FeatureTap`)."""
    return FeatureTap(model, get_spec(model_name).scope_layers, stop=stop)


@torch.no_grad()
def scope_features(model: nn.Module, model_name: str, pixels: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The scope features of uint8 RGB patches (N, 96, 96, 3), one forward pass each (no TTA), each pass ended once
    the scope layers have run (they are early layers: the rest of the network and the head would be spent)."""
    device = next(model.parameters()).device
    normalize = eval_preset().to(device)
    parts = []
    model.eval()
    with tap_for(model, model_name, stop=True) as tap:
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])).permute(0, 3, 1, 2).to(device)
            try:
                model(normalize(batch))
            except TapFull:
                pass
            parts.append(tap.take())
    return np.concatenate(parts) if parts else np.empty((0, 0))


@dataclass(frozen=True)
class ScopeModel:
    """The fitted guard of one model: where its training patches' features lie, and the threshold."""

    model_name: str
    layers: tuple[str, ...]
    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D), the inverse of the shrunk covariance
    threshold: float  # a distance above it is out of scope
    rate: float  # the share of the calibration patches above the threshold
    n_fit: int
    n_calibration: int
    fitted_on: str  # in words: which patches
    fitted_at: str

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` from the training patches' mean."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.mean.size:
            raise ValueError(f"scope features must be (N, {self.mean.size}) for {self.model_name}, got {features.shape}")
        centred = features - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0.0))

    def in_scope(self, distances: np.ndarray) -> np.ndarray:
        """Boolean: which distances lie within the threshold (NaN is out of scope)."""
        d = np.asarray(distances, dtype=np.float64)
        return np.nan_to_num(d, nan=np.inf) <= self.threshold

    def record(self) -> dict[str, Any]:
        """What to show about the guard (no arrays)."""
        return {"method": "Mahalanobis distance of early-layer feature statistics (Ledoit-Wolf covariance)",
                "model": self.model_name, "layers": list(self.layers), "threshold": self.threshold, "rate": self.rate,
                "n_fit": self.n_fit, "n_calibration": self.n_calibration, "fitted_on": self.fitted_on,
                "fitted_at": self.fitted_at}

    def save(self, path: str | Path) -> None:
        """Write as .npz (arrays and a JSON record, no pickle), atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, precision=self.precision,
                 record=np.array(json.dumps({"format": SCOPE_FORMAT, **self.record()})))
        data = buffer.getvalue()
        atomic_write_with(path, lambda h: h.write(data))

    @classmethod
    def load(cls, path: str | Path) -> ScopeModel:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                record = json.loads(str(npz["record"]))
                mean, precision = npz["mean"], npz["precision"]
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not an out-of-scope record ({type(err).__name__}: {err})") from err
        if record.get("format") != SCOPE_FORMAT:
            raise ValueError(f"{path}: not an out-of-scope record (format {record.get('format')!r}, expected {SCOPE_FORMAT!r})")
        return cls(record["model"], tuple(record["layers"]), mean, precision, float(record["threshold"]),
                   float(record["rate"]), int(record["n_fit"]), int(record["n_calibration"]), record["fitted_on"],
                   record["fitted_at"])


def fit_scope(fit_features: np.ndarray, calibration_features: np.ndarray, *, model_name: str,
              rate: float = FLAG_RATE, fitted_on: str = "") -> ScopeModel:
    """Fit the guard: mean and Ledoit-Wolf covariance of `fit_features` (the training patches'), threshold the
    (1 - rate) quantile of the distances of `calibration_features` (held-out in-domain patches, not the same)."""
    if not 0 < rate < 1:
        raise ValueError(f"rate={rate} must lie strictly between 0 and 1 (e.g. 0.05)")
    fit_features = np.asarray(fit_features, dtype=np.float64)
    calibration_features = np.asarray(calibration_features, dtype=np.float64)
    if len(fit_features) <= fit_features.shape[1]:
        raise ValueError(f"the guard needs more patches to fit than features ({len(fit_features)} <= {fit_features.shape[1]})")
    if len(calibration_features) < 20:
        raise ValueError(f"the guard's threshold needs at least 20 held-out patches, got {len(calibration_features)}")
    from sklearn.covariance import LedoitWolf  # here: a process that only scores with a guard does not import sklearn (0.7 s)

    estimator = LedoitWolf().fit(fit_features)
    spec = get_spec(model_name)
    draft = ScopeModel(model_name, spec.scope_layers, estimator.location_, estimator.precision_, float("inf"), rate,
                       len(fit_features), len(calibration_features), fitted_on,
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    distances = draft.distance(calibration_features)
    threshold = float(np.quantile(distances, 1 - rate, method="higher"))
    flagged = float(np.mean(distances > threshold))
    return ScopeModel(**{**draft.__dict__, "threshold": threshold, "rate": flagged})


def fit_run_scope(folder: Any, model: nn.Module, config: Any, *, limit: int = 5000, seed: int = 0,
                  batch_size: int = 256) -> ScopeModel:
    """Fit a run's guard on its own data and keep it in the run folder (`RunDir.scope_path`): statistics on up
    to `limit` of its training patches (a seeded sample), threshold on up to `limit` of its validation patches
    (patches the weights were not fitted on). `config` is the run's ExperimentConfig; `folder` its RunDir."""
    from .data.loader import run_datasets  # data, only when fitting

    data = run_datasets(config)
    rng = np.random.default_rng(seed)

    def sample(dataset: Any) -> np.ndarray:
        n = len(dataset)
        chosen = np.sort(rng.choice(n, size=min(n, limit), replace=False))
        return dataset.read_pixels(chosen)

    model.eval()
    fit = scope_features(model, config.model.name, sample(data.train), batch_size=batch_size)
    held = scope_features(model, config.model.name, sample(data.valid), batch_size=batch_size)
    scope = fit_scope(fit, held, model_name=config.model.name,
                      fitted_on=f"{len(fit)} training and {len(held)} validation patches of {config.data.path}")
    scope.save(folder.scope_path)
    return scope


__all__ = ["FLAG_RATE", "FeatureTap", "ScopeModel", "TapFull", "fit_run_scope", "fit_scope", "load_scope", "scope_features", "tap_for"]
