"""The dashboard's plotly figures: class balance, colours, learning curves, ROC and PR curves, the
confusion matrix and probability histograms. Each is a function of what `pcam_core` computed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from pcam_core.workspace.monitor import CURVE_METRICS
from pcam_core.workspace.scoring import ThresholdReport

from .thresholds import text as threshold_text  # a threshold as chosen, never rounded

TUMOUR_COLOUR = "#c2185b"
NORMAL_COLOUR = "#00897b"
CLASS_COLOURS = {"tumour": TUMOUR_COLOUR, "normal": NORMAL_COLOUR, "unlabelled": "#9e9e9e"}
CHANNEL_COLOURS = {"red": "#d32f2f", "green": "#388e3c", "blue": "#1976d2"}
BOUNDED_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1")
# The trace types these figures use: the dashboard's plotly.js bundle draws only these (static/, built by
# scripts/plotly-bundle with the same list).
TRACE_TYPES = ("scatter", "bar", "heatmap", "histogram")


def _house_template() -> go.layout.Template:
    """plotly's "plotly_white" look, cut down to what 2-D charts of `TRACE_TYPES` read: the full template
    carries defaults for 24 trace types and for 3-D, polar, geographic and ternary axes."""
    white = pio.templates["plotly_white"]
    layout = {k: v for k, v in white.layout.to_plotly_json().items() if k not in ("geo", "polar", "scene", "ternary")}
    return go.layout.Template(layout=layout, data={kind: white.data[kind] for kind in TRACE_TYPES})


# Every figure of the dashboard's process starts from it (plotly's default template): naming a template
# per figure had plotly copy and validate it each time, 8 of the 10 ms a figure took to build and write.
pio.templates["pcam"] = _house_template()
pio.templates.default = "pcam"


def _layout(fig: go.Figure, title: str, height: int = 320, **kwargs: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), **kwargs)
    return fig


def _epoch_axis(fig: go.Figure, epochs: pd.Series) -> go.Figure:
    """Whole epochs on the x axis (at most about ten ticks)."""
    last = int(epochs.max()) if len(epochs) and epochs.notna().any() else 1
    fig.update_xaxes(tick0=1, dtick=max(1, round(last / 10)))
    return fig


def balance_figure(counts: pd.DataFrame) -> go.Figure:
    """Stacked bars of patches per class, one bar per split (`split`, `normal`, `tumour`, `unlabelled`)."""
    fig = go.Figure()
    for name in ("normal", "tumour", "unlabelled"):
        if name in counts and counts[name].sum():
            share = counts[name] / counts[["normal", "tumour", "unlabelled"]].sum(axis=1).clip(lower=1)
            fig.add_bar(x=counts["split"], y=counts[name], name=name, marker_color=CLASS_COLOURS[name],
                        customdata=share, hovertemplate="%{x}: %{y:,} " + name + " (%{customdata:.1%})<extra></extra>")
    return _layout(fig, "Patches per split and class", barmode="stack", yaxis_title="patches")


def colour_figures(summary: pd.DataFrame, hist: pd.DataFrame) -> tuple[go.Figure, go.Figure]:
    """Mean channel value per class (with standard deviation), and the channel histograms per class."""
    bars = go.Figure()
    for name, group in summary.groupby("class", sort=False):
        bars.add_bar(x=group["channel"], y=group["mean"], error_y=dict(type="data", array=group["std"]),
                     name=f"{name} ({int(group['patches'].iloc[0])} patches)", marker_color=CLASS_COLOURS[name])
    _layout(bars, "Mean pixel value per channel (± standard deviation)", barmode="group", yaxis=dict(range=[0, 255]))
    lines = go.Figure()
    for (name, channel), group in hist.groupby(["class", "channel"], sort=False):
        lines.add_scatter(x=group["intensity"], y=group["share"], mode="lines", name=f"{name} · {channel}",
                          line=dict(color=CHANNEL_COLOURS[channel], dash="solid" if name == "tumour" else "dot"))
    _layout(lines, "Pixel intensity per channel (solid: tumour, dotted: normal)", xaxis_title="intensity (0-255)",
            yaxis_title="share of pixels")
    return bars, lines


def curves_figure(frame: pd.DataFrame, metric: str, *, title: str | None = None, height: int = 320) -> go.Figure:
    """One line per run of an epoch metric from `monitor.epoch_frame`."""
    fig = go.Figure()
    for run_id, group in frame.groupby("run", sort=False):
        fig.add_scatter(x=group["epoch"], y=group[metric], mode="lines+markers", name=run_id)
    _layout(fig, title or CURVE_METRICS[metric], height=height, xaxis_title="epoch",
            yaxis_title=CURVE_METRICS[metric], showlegend=frame["run"].nunique() > 1)
    values = frame[metric].dropna()
    if metric in BOUNDED_METRICS:  # scores in [0, 1]: never an axis beyond 1, nor plotly's -1 to 4 of an empty chart
        fig.update_yaxes(range=[max(0.0, float(values.min()) - 0.02) if len(values) else 0.0, 1.002])
    if not len(values):
        return _empty(fig, "no epochs yet")
    return _epoch_axis(fig, frame["epoch"])


def _empty(fig: go.Figure, words: str) -> go.Figure:
    """A chart with nothing to draw yet: the words in its middle, and an epoch axis from 1 (plotly's own for no data
    runs from -1, epochs no run has)."""
    fig.add_annotation(text=words, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    fig.update_xaxes(range=[1, 2], tick0=1, dtick=1)
    if fig.layout.yaxis.range is None:
        fig.update_yaxes(range=[0, 1])
    return fig


def loss_figure(steps: pd.DataFrame, epochs: pd.DataFrame, *, title: str = "Loss") -> go.Figure:
    """Training loss every few steps (or, for a run too short to log a step line, each epoch's mean) and validation
    loss per epoch, against epochs; the legend always names them."""
    fig = go.Figure()
    if len(steps):
        fig.add_scatter(x=steps["epoch"], y=steps["loss"], mode="lines+markers", name="training loss (recent steps)",
                        line=dict(color="#7b3f8c"), marker=dict(size=4))
    elif len(epochs) and epochs["train_loss"].notna().any():
        fig.add_scatter(x=epochs["epoch"], y=epochs["train_loss"], mode="lines+markers", name="training loss (epoch mean)",
                        line=dict(color="#7b3f8c"), marker=dict(size=4))
    if len(epochs):
        fig.add_scatter(x=epochs["epoch"], y=epochs["loss"], mode="lines+markers", name="validation loss",
                        line=dict(color="#ef6c00"))
    _layout(fig, title, xaxis_title="epoch", yaxis_title="loss", showlegend=True)
    if not len(steps) and not len(epochs):
        return _empty(fig, "no steps yet")
    return _epoch_axis(fig, epochs["epoch"] if len(epochs) else steps["epoch"])


def _curve_figure(report: ThresholdReport, curve: dict[str, list[float]] | None, x: str, y: str, name: str,
                  hover: str) -> go.Figure:
    """A curve from `scoring` (keys `x`, `y`, `threshold`) and, as a black cross, the point the
    report's threshold selects on it (`report.operating_point` uses the same keys)."""
    fig = go.Figure()
    if curve is not None:
        fig.add_scatter(x=curve[x], y=curve[y], mode="lines", name=name, line=dict(color="#7b3f8c"),
                        customdata=curve["threshold"], hovertemplate=hover + "<br>threshold %{customdata:.3f}<extra></extra>")
    px, py = report.operating_point[x], report.operating_point[y]
    if px is not None and py is not None:
        fig.add_scatter(x=[px], y=[py], mode="markers", name=f"threshold {threshold_text(report.threshold)}",
                        marker=dict(size=12, color="black", symbol="x"))
    return fig


_UNIT_AXIS = dict(range=[-0.01, 1.01])


def roc_figure(report: ThresholdReport) -> go.Figure:
    fig = _curve_figure(report, report.roc, "fpr", "tpr", "ROC", "1 - specificity %{x:.3f}<br>sensitivity %{y:.3f}")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bdbdbd", dash="dash"), name="chance", hoverinfo="skip")
    auc = report.metrics["roc_auc"]
    return _layout(fig, f"ROC curve (AUC {auc:.3f})" if auc is not None else "ROC curve (needs both classes)", height=340,
                   xaxis_title="1 - specificity (false positive rate)", yaxis_title="sensitivity (recall)",
                   xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)


def pr_figure(report: ThresholdReport) -> go.Figure:
    fig = _curve_figure(report, report.pr, "recall", "precision", "PR", "recall %{x:.3f}<br>precision %{y:.3f}")
    prevalence = report.metrics["prevalence"]
    fig.add_hline(y=prevalence, line=dict(color="#bdbdbd", dash="dash"), annotation_text=f"prevalence {prevalence:.2f}")
    ap = report.metrics["pr_auc"]
    return _layout(fig, f"Precision-recall curve (AP {ap:.3f})" if ap is not None else "Precision-recall curve", height=340,
                   xaxis_title="recall (sensitivity)", yaxis_title="precision", xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)


def confusion_figure(report: ThresholdReport) -> go.Figure:
    """2x2 heat map coloured by the rate within each true class, annotated with counts and rates."""
    table = report.confusion
    order = ["normal", "tumour"]
    rate = table.pivot(index="true", columns="called", values="rate").reindex(index=order, columns=order)
    count = table.pivot(index="true", columns="called", values="count").reindex(index=order, columns=order)
    names = {("normal", "normal"): "true negative", ("normal", "tumour"): "false positive",
             ("tumour", "normal"): "false negative", ("tumour", "tumour"): "true positive"}
    text = [[f"{names[(t, c)]}<br><b>{int(count.loc[t, c]):,}</b><br>{rate.loc[t, c]:.1%} of {t}"
             if rate.loc[t, c] == rate.loc[t, c] else f"{names[(t, c)]}<br>0" for c in order] for t in order]
    fig = go.Figure(go.Heatmap(z=rate.fillna(0).to_numpy(), x=[f"called {c}" for c in order], y=[f"truly {t}" for t in order],
                               text=text, texttemplate="%{text}", colorscale="Purples", zmin=0, zmax=1, showscale=False,
                               hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Confusion matrix at threshold {threshold_text(report.threshold)}", height=340)


PROBABILITY_BIN = 0.025


def probability_figure(predictions: pd.DataFrame, threshold: float) -> go.Figure:
    """Histogram of probabilities per true class, with the threshold. The bins are counted here, so the
    chart carries 80 numbers rather than every prediction (262,144 for PCam's training split)."""
    fig = go.Figure()
    edges = np.linspace(0.0, 1.0, round(1 / PROBABILITY_BIN) + 1)
    for value, name in ((0, "normal"), (1, "tumour")):
        counts, _ = np.histogram(predictions.loc[predictions["label"] == value, "probability"], bins=edges)
        fig.add_bar(x=edges[:-1] + PROBABILITY_BIN / 2, y=counts, width=PROBABILITY_BIN, name=f"truly {name}",
                    marker=dict(color=CLASS_COLOURS[name], line_width=0), opacity=0.65,
                    customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                    hovertemplate="%{customdata[0]:.3f}-%{customdata[1]:.3f}: %{y:,} truly " + name + " patches<extra></extra>")
    fig.add_vline(x=threshold, line=dict(color="black", width=2), annotation_text=f"threshold {threshold_text(threshold)}")
    return _layout(fig, "Probabilities by true class", height=340, barmode="overlay", bargap=0,
                   xaxis_title="tumour probability", yaxis_title="patches", xaxis=dict(range=[0, 1]))


ROBUSTNESS_METRICS = {"roc_auc": "ROC-AUC", "ece": "calibration error (ECE)"}


def robustness_figure(table: pd.DataFrame, metric: str, limit: float) -> go.Figure:
    """A figure of `pcam robustness`'s table: `metric` against the shift's strength, one line per shift,
    and the line past which the report card stops trusting the model (`limit`)."""
    fig = go.Figure()
    for _, group in table.groupby("shift", sort=False):
        group = group.sort_values("strength")
        fig.add_scatter(x=group["strength"], y=group[metric], mode="lines+markers", name=group["title"].iloc[0],
                        customdata=np.stack([group["level"], group["unit"]], axis=1),
                        hovertemplate="strength %{x:+d} (%{customdata[1]} %{customdata[0]:.3g}): %{y:.3f}<extra>%{fullData.name}</extra>")
    fig.add_hline(y=limit, line=dict(color="#c62828", dash="dash"),
                  annotation_text=f"{'trusted above' if metric == 'roc_auc' else 'trusted below'} {limit:.3f}")
    return _layout(fig, f"{ROBUSTNESS_METRICS[metric]} against the strength of each shift", height=380,
                   xaxis_title="strength (0: the patches as they are; see the table for each level)",
                   yaxis_title=ROBUSTNESS_METRICS[metric], xaxis=dict(dtick=1))


def reliability_figure(report: dict[str, Any]) -> go.Figure:
    """The reliability diagram of a scored split before and after the run's temperature
    (`calibration.calibration_report`): observed tumour frequency against mean predicted probability per
    bin; a calibrated model lies on the diagonal."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bdbdbd", dash="dash"), name="perfectly calibrated",
                    hoverinfo="skip")
    for key, name, colour in (("reliability_before", f"raw (ECE {report['before']['ece']:.3f})", "#7b3f8c"),
                              ("reliability_after", f"calibrated, {report['describe']} (ECE {report['after']['ece']:.3f})",
                               "#ef6c00")):
        points = report[key]
        fig.add_scatter(x=points["predicted"], y=points["observed"], mode="lines+markers", name=name, line=dict(color=colour),
                        hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<extra></extra>")
    return _layout(fig, "Reliability diagram", height=340, xaxis_title="mean predicted probability (per bin of 0.1)",
                   yaxis_title="observed share of tumour", xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)


def triage_figure(curve: dict[str, list[float]], target: float) -> go.Figure:
    """Referral rate and miss rate reached against the target sensitivity of the triage (`triage.triage_curve`)."""
    fig = go.Figure()
    fig.add_scatter(x=curve["target"], y=curve["referral_rate"], mode="lines+markers", name="referred to a pathologist",
                    line=dict(color="#7b3f8c"), hovertemplate="target %{x:.3f}<br>referred %{y:.1%}<extra></extra>")
    fig.add_scatter(x=curve["target"], y=curve["miss_rate"], mode="lines+markers", name="tumour patches called normal",
                    line=dict(color=TUMOUR_COLOUR), hovertemplate="target %{x:.3f}<br>missed %{y:.1%}<extra></extra>")
    fig.add_scatter(x=curve["target"], y=[1 - t for t in curve["target"]], mode="lines", name="miss rate allowed (1 - target)",
                    line=dict(color="#bdbdbd", dash="dash"), hoverinfo="skip")
    fig.add_vline(x=target, line=dict(color="black", width=2), annotation_text=f"target {target:.3f}")
    return _layout(fig, "Triage: referral against target sensitivity", height=340, xaxis_title="target sensitivity",
                   yaxis_title="share", yaxis=dict(range=[0, 1], tickformat=".0%"))


def roc_overlay_figure(curves: dict[str, dict[str, list[float]]], aucs: dict[str, float]) -> go.Figure:
    """The ROC curves of several runs on the same patches, overlaid."""
    fig = go.Figure()
    for name, curve in curves.items():
        fig.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {aucs[name]:.3f})",
                        customdata=curve["threshold"],
                        hovertemplate="1 - specificity %{x:.3f}<br>sensitivity %{y:.3f}<br>threshold %{customdata:.3f}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bdbdbd", dash="dash"), name="chance", hoverinfo="skip")
    return _layout(fig, "ROC curves on the same patches", height=360, xaxis_title="1 - specificity (false positive rate)",
                   yaxis_title="sensitivity (recall)", xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)
