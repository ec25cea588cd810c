"""Train: a form for the experiment config, launched as a background process (several, through torchrun,
when asked) by `pcam_core.runs`, and a live view of the selected run that polls its folder (progress and
time left, loss and validation AUC, log tail), with stop and resume (with the same number of
processes). A run outlives page reloads, closed tabs and app restarts. The form also starts a cross-validation
(`pcam train --folds K`: the fold under way drawn live, every fold's curve beside it, the cross-validated figures
at the end) and distillation from a teacher (`--teacher`, checked before the run starts)."""

import streamlit as st

from pcam_app import figures, notes, reviews, run_tables, shell, sidebar
from pcam_app.components.chart import chart
from pcam_core.config import OPTIMIZERS, SCHEDULES, AugmentConfig, DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from pcam_core.config import TrackingConfig
from pcam_core.tracking import INSTALL_HINT, create_tracker, resolve_uri
from pcam_core.models import MODELS, model_names, resolve_model_name
from pcam_core.crossval import cv_lines
from pcam_core.fileio import read_json
from pcam_core.workspace.monitor import (RESUMABLE_STATES, STATE_ICONS, cross_validation_progress, epoch_frame, progress_key,
                                         run_progress, step_frame)
from pcam_core.predict import resolve_device
from pcam_core.runs import (ACTIVE_STATES, RunDir, cross_validation_folds, gpu_count, launch, max_processes, process_count, stop,
                            summarize)

STATE_COLOURS = {"queued": "gray", "running": "blue", "finished": "green", "stopped": "orange", "interrupted": "orange",
                 "failed": "red"}

ctx = shell.context()
st.title("Train")
st.caption("Training runs as a separate process on this machine: it keeps going when you close the tab or restart the app.")

form_column, live_column = st.columns([1, 1.9], gap="large")

# -- the form ---------------------------------------------------------------------------------------------
with form_column:
    st.subheader("New run")
    trainable = [s for s in ctx.sources if "train" in s.splits()]
    if not trainable:
        st.info("No data source with a training split. Add a PCam HDF5 or Kaggle folder on the Overview page.",
                icon=":material/database:")
    else:
        by_name = {s.name: s for s in trainable}
        default = ctx.source.name if ctx.source and ctx.source.name in by_name else trainable[0].name
        defaults = ExperimentConfig()
        with st.form("train_form", enter_to_submit=False):  # Enter in a number field started a run (several, typing on)
            data_name = st.selectbox("Data", list(by_name), index=list(by_name).index(default),
                                     format_func=lambda n: by_name[n].label)
            name = st.text_input("Run name (optional)", max_chars=40, placeholder="e.g. baseline",
                                 help="A label added to the run's id.")
            # the names alone in the box (a description cut at its width said nothing); the descriptions in its help
            model = st.selectbox("Model", ["auto", *model_names()],
                                 format_func=lambda m: m,
                                 help="auto: pcamnet on a CPU, resnet18 on a GPU.\n\n"
                                      + "\n".join(f"- **{m}**: {MODELS[m].description}" for m in model_names()))
            c1, c2 = st.columns(2)
            epochs = c1.number_input("Epochs", min_value=1, max_value=500, value=5,
                                     help=f"Passes over the training split. A few suffice on the demo data; the CPU recipe uses {defaults.train.epochs} on PCam.")
            batch_size = c2.select_slider("Batch size", [16, 32, 64, 128, 256, 512], value=defaults.train.batch_size)
            lr = c1.select_slider("Peak learning rate", [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2], value=defaults.train.lr,
                                  format_func=lambda v: f"{v:g}")
            gpus = gpu_count()
            devices = ["auto", "cpu"] + (["cuda"] if gpus else [])
            device = c2.segmented_control("Device", devices, default="auto", required=True,
                                          help="auto: the GPU when there is one." + ("" if gpus else " No GPU here."))
            folds = c2.number_input(
                "Cross-validation folds (0: off)", min_value=0, max_value=20, value=0,
                help="K >= 2 trains K runs, each on all but one fold of the data and validated on that fold (stratified by "
                     "label, grouped by slide where the data names slides), scores every patch with the run that did not "
                     "train on it, and makes their ensemble the run: its figures are cross-validated over all the data, "
                     "with intervals, and its temperature and triage are fitted on them. How the bundled model was made "
                     "(`pcam train --folds K`). K times the training: one fold after another, or several side by side with "
                     "more than one process.")
            most = max_processes()
            nproc = c1.number_input(
                "Processes", min_value=1, max_value=most, value=1,
                help="Training processes working together (DistributedDataParallel, launched through torchrun); the batch "
                     "size is per process, and stop and resume keep the number. With cross-validation folds, each process "
                     "trains a fold of its own, side by side (`pcam train --parallel-folds`; one GPU each where there are "
                     "several). "
                     + (f"One per GPU: {most} here." if gpus else
                        f"Up to the {most} CPU cores here; the processes share them, so on a CPU more rarely train faster."))
            st.markdown("**Augmentation** (training only; the label region stays in the centre)")
            symmetries = st.checkbox("Flips and 90° rotations", value=True,
                                     help="Tissue has no up or down: the 8 symmetries of the square.")
            a1, a2 = st.columns(2)
            shift = a2.slider("Shift (pixels)", 0, 16, defaults.augment.shift, help="Random translation, reflect-padded.")
            stain = a1.slider("Stain jitter (HED)", 0.0, 0.2, defaults.augment.stain, 0.01,
                              help="Varies haematoxylin and eosin amounts, as between labs and scanners.")
            colour = a2.slider("Colour jitter", 0.0, 0.5, defaults.augment.brightness, 0.05,
                               help="Brightness, contrast and saturation.")
            mix = a1.slider("Mixup (0: off)", 0.0, 1.0, defaults.augment.mixup, 0.1, key="mixup",
                            help="Blends pairs of patches and their labels, by a weight drawn from Beta(a, a) with this a "
                                 "(0.2-0.4 is usual). On the real patches 0.2 made the 54-epoch recipe worse (docs/recipe-experiments.md).")
            with st.expander("Advanced"):
                b1, b2 = st.columns(2)
                optimizer = b1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults.train.optimizer))
                schedule = b2.selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(defaults.train.schedule))
                weight_decay = b1.number_input("Weight decay", 0.0, 1.0, defaults.train.weight_decay, format="%.0e", step=1e-4)
                ema = b2.number_input("Weight averaging (EMA decay, 0: off)", 0.0, 0.999, defaults.train.ema_decay, step=0.01)
                early = b1.number_input("Early stopping (epochs, 0: off)", 0, 100, defaults.train.early_stopping)
                max_steps = b2.number_input("Stop after steps (0: no limit)", 0, 10_000_000, 0,
                                            help="A quick trial: train for this many batches only, then validate.")
                seed = b1.number_input("Seed", 0, 2**31 - 1, defaults.train.seed)
                valid_frac = b2.number_input("Validation share (Kaggle data)", 0.01, 0.5, defaults.data.valid_frac, step=0.01,
                                             help="Kaggle data has no validation split; this share is held out, stratified by label.")
                teachers = {"": "none", "bundled": "the bundled model",
                            **{str(r.path): r.run_id for r in ctx.runs if r.state == "finished"}}
                d1, d2 = st.columns(2)
                teacher = d1.selectbox(
                    "Teacher (distillation)", list(teachers), format_func=teachers.get, key="teacher",
                    help="Each training patch's target leans towards the teacher's probability of it (its TTA mean, scored "
                         "once before the first epoch): what a larger model or an ensemble learnt, handed to this one. With "
                         "cross-validation folds, fold k is taught by the teacher's member that held out the same patches, "
                         "so the teacher must be a cross-validation of the same data and folds (the bundled model is one); "
                         "without folds the figures are honest only if the teacher never saw this run's validation patches.")
                distil = d2.slider("Teacher's weight in the target", 0.05, 1.0, defaults.train.distil, 0.05, key="distil",
                                   help="target = (1 - w) x label + w x the teacher's probability. Used with a teacher only.")
                mlflow_uri = st.text_input("MLflow tracking URI (optional)", key="mlflow_uri", placeholder="sqlite:////path/to/mlflow.db",
                                           help="Also log the config, every epoch's metrics and the best checkpoint to this "
                                                f"MLflow tracking store (needs `{INSTALL_HINT}`). The run folder stays "
                                                "what this dashboard shows.")
            overrides = reviews.override_counts(ctx.workspace.reviews(), list(by_name))
            use_reviews = st.checkbox(f"Use reviewed labels ({reviews.override_text(overrides)})", key="use_reviews",
                                      disabled=not any(overrides.values()),
                                      help="Train with the current reviews of the chosen data (Review page): Label wrong flips "
                                           "a training patch's label, Artefact drops it. The run keeps a copy of the reviews "
                                           "it used and what they changed.")
            submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
        if submitted:
            source = by_name[data_name]
            try:
                label_overrides = reviews.export_for_training(ctx.workspace, source.name) if use_reviews else None
                config = ExperimentConfig(
                    data=DataConfig(path=source.path, format=source.format, valid_frac=valid_frac, label_overrides=label_overrides,
                                    folds=int(folds)),
                    augment=AugmentConfig(symmetries=symmetries, stain=stain, brightness=colour, contrast=colour,
                                          saturation=colour, shift=shift, hue=defaults.augment.hue if colour else 0.0, mixup=float(mix)),
                    model=ModelConfig(name=resolve_model_name(model, resolve_device(device))),
                    train=TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), device=device,
                                      optimizer=optimizer, schedule=schedule, weight_decay=float(weight_decay),
                                      ema_decay=float(ema), early_stopping=int(early), seed=int(seed),
                                      max_steps=int(max_steps) or None, teacher=teacher or None, distil=float(distil)),
                    tracking=TrackingConfig(mlflow_uri=resolve_uri(mlflow_uri.strip()) if mlflow_uri.strip() else None),
                    name=name.strip(),
                )
                create_tracker(config.tracking)  # a missing mlflow or an unusable URI is said here, not in a failed run
                run = ctx.workspace.start_run(config, nproc=int(nproc))
            except (OSError, ValueError, RuntimeError) as err:
                st.error(f"Not started: {err}", icon=":material/error:")
            else:
                sidebar.select_run(run.run_id)
                st.toast(f"Started {run.run_id}", icon=":material/play_arrow:")
                st.rerun()


# -- the live view ----------------------------------------------------------------------------------------

def live_view(run: RunDir, drawn: tuple) -> None:
    status = run.status()
    state = status.get("state", "unknown")
    active = state in ACTIVE_STATES
    summary = summarize(run)
    processes, folds = process_count(run), cross_validation_folds(run)
    head, buttons = st.columns([3, 1.2], vertical_alignment="center")
    with head:
        st.markdown(f"#### `{run.run_id}`")
        st.badge(f"{STATE_ICONS.get(state, '')} {state}", color=STATE_COLOURS.get(state, "gray"))
        if processes > 1:
            st.badge(f"{processes} folds side by side" if folds else f"{processes} processes", icon=":material/lan:", color="violet")
    with buttons:
        if active and st.button("Stop", icon=":material/stop:", key="stop", help="Stops cleanly: a checkpoint is saved first."):
            if stop(run):
                st.toast("Stopping: the run saves a checkpoint, then ends.", icon=":material/stop:")
            st.rerun()
        if state in RESUMABLE_STATES and st.button("Resume", icon=":material/play_arrow:", key="resume",
                                                   help=f"Continue from the last checkpoint, with the same {processes} "
                                                        f"process{'es' if processes > 1 else ''}."):
            try:
                launch(run, nproc=processes, resume=True)
            except (OSError, RuntimeError) as err:
                st.error(f"Could not resume: {err}")
            else:
                st.rerun()
    if progress_key(summary) != drawn:
        # started, ended, failed, or an epoch ended: redraw everything, so that the sidebar and the runs table (drawn
        # outside this fragment) say what the live view says; polling only if alive. After the buttons: a click on
        # Stop in the run that found an epoch ended was dropped by this rerun (QA: with short epochs, clicks were lost)
        st.rerun()
    notes.synthetic_banner(bool(status.get("synthetic_data")), "This run uses SYNTHETIC demo data.")
    if folds:  # the fold under way drawn live, every fold's curve beside it
        cv = cross_validation_progress(run)
        member = run.fold(cv.fold - 1)
        steps, epochs = member.steps(), member.epochs()
        progress = cv.current or run_progress({}, [], [])
        st.progress(cv.fraction, text=cv.text)
        curves = epoch_frame({f"fold {k + 1}": run.fold(k).epochs() for k in range(len(cv.members))})
        steps_per_epoch = member.status().get("steps_per_epoch")
    else:
        steps, epochs = run.steps(), run.epochs()
        progress = run_progress(status, steps, epochs)
        st.progress(progress.fraction, text=progress.text)
        curves = epoch_frame({run.run_id: epochs})
        steps_per_epoch = status.get("steps_per_epoch")
    if state == "failed":
        st.error(f"The run failed: {status.get('message') or status.get('error') or 'see the log below'}", icon=":material/error:")
    elif state in ("stopped", "interrupted"):
        st.warning(f"{status.get('message') or state}. Resume continues from the last checkpoint.", icon=":material/pause:")
    notes.run_warnings(member if folds else run)  # for a cross-validation, the fold's under way
    with st.container(horizontal=True, gap="medium" if folds else "large"):  # four figures on one line in either case
        if folds:
            pooled = (summary.best or {}).get("roc_auc")
            st.metric("Cross-validated ROC-AUC", f"{pooled:.3f}" if pooled is not None else "-", width="content",
                      help="Over every patch, each scored once by the fold run that did not train on it (one pass); "
                           "there once every fold is done.")
            for k in (cv.running if cv.side_by_side else (cv.fold,)):  # each fold under way
                fold_epochs = epochs if k == cv.fold else run.fold(k - 1).epochs()
                last = fold_epochs[-1].get("roc_auc") if fold_epochs else None
                st.metric(f"Fold {k} ROC-AUC", f"{last:.3f}" if last is not None else "-", width="content",
                          help="On the fold's held-out patches, at its latest epoch (a fold keeps its last epoch).")
        else:
            best = run.best_epoch()
            st.metric("Best ROC-AUC", f"{best['roc_auc']:.3f}" if best and best.get("roc_auc") is not None else "-", width="content",
                      help="Area under the ROC curve on the validation split at the best epoch so far: 0.5 is chance, 1 perfect.")
        st.metric("Training loss", f"{progress.train_loss:.3f}" if progress.train_loss is not None else "-", width="content",
                  help="Mean loss of the most recent training steps (of the last epoch, for a run too short to log steps).")
        st.metric("Patches/s", f"{progress.images_per_s:,.0f}" if progress.images_per_s else "-", width="content",
                  help="Training speed over the most recent steps (over the last epoch, for a run too short to log steps).")
    if folds and run.cv_path.exists():  # the job's own figures: pooled over every patch, with intervals
        st.caption("  \n".join(cv_lines(read_json(run.cv_path))))
    left, right = st.columns(2)
    chart(figures.loss_figure(step_frame(steps, steps_per_epoch), epoch_frame({"": epochs}),
                              title=f"Loss of fold {cv.fold}" if folds else "Loss"), key="live_loss", where=left)
    chart(figures.curves_figure(curves, "roc_auc", title="Validation ROC-AUC per epoch" + (" of every fold" if folds else "")),
          key="live_auc", where=right)
    log = run.log_tail(12)
    if state == "failed" and not log.strip():
        log = run.log_tail(12, console=True)
    # Plain monospace text: a code block would load a syntax highlighter (a quarter of a second of the
    # browser's time when the page opens in a new tab) for a log that has no syntax to highlight.
    with st.container(border=True):
        st.text(log or "(no log yet)")


WATCHED = "train_watched_run"


def _all_runs_table(drawn: tuple) -> None:
    """Every run of the workspace; while one trains, read again every few seconds, and the whole page redrawn when
    any run's state or epochs moved on (a run started elsewhere, or one this page does not watch, included)."""
    now = ctx.workspace.runs() if drawn else ctx.runs
    if drawn and tuple(progress_key(s) + (s.run_id,) for s in now) != drawn:
        st.rerun()
    if now:
        run_tables.runs_summary_table(now, ctx.source_names(), key="all_runs", caption="All runs", height=300)
        st.caption("Pick a run in the sidebar to watch it here; the Runs page compares them.")
    else:
        st.caption("No runs yet.")


with live_column:
    run = None if ctx.bundled else ctx.run  # the bundled model was not trained here
    others = [s for s in ctx.runs if run is None or s.run_id != run.run_id]
    training = [s.run_id for s in others if s.state in ACTIVE_STATES]
    watched = st.session_state.get(WATCHED)  # the run this tab watched while it trained, unselected
    if training:  # a run training now, not the selected one: watched here when the sidebar shows no run of the workspace
        if run is None:
            run = ctx.workspace.run(training[0])
            st.session_state[WATCHED] = run.run_id  # still shown here once it ends, not "No run selected"
            st.caption(f"Watching `{run.run_id}`, training now; the sidebar's selected model is "
                       f"{'the bundled model' if ctx.bundled else 'none'}.")
        else:
            st.caption(f"Training now: `{training[0]}`" + (f" and {len(training) - 1} more" if len(training) > 1 else "")
                       + "; below, the run selected in the sidebar.")
        if st.button("Select it" if run.run_id == training[0] else "Watch it", key="select_training", icon=":material/visibility:",
                     help=f"Make {training[0]} the sidebar's selected run (for the other pages too) and watch it here."):
            st.session_state.pop(WATCHED, None)
            sidebar.select_run(training[0])
            st.rerun()
    elif run is None and (ended := next((s for s in others if s.run_id == watched), None)) is not None:
        run = ctx.workspace.run(ended.run_id)  # it ended while watched here: its end shown, where it can be resumed
        st.caption(f"`{run.run_id}`, watched here while it trained, is {ended.state}; the sidebar's selected model is "
                   f"{'the bundled model' if ctx.bundled else 'none'}.")
        if st.button("Select it", key="select_watched", icon=":material/visibility:",
                     help=f"Make {run.run_id} the sidebar's selected run, for the other pages too."):
            st.session_state.pop(WATCHED, None)
            sidebar.select_run(run.run_id)
            st.rerun()
    elif others and others[0] is ctx.runs[0] and others[0].state in RESUMABLE_STATES:  # the newest run stopped, not shown
        st.caption(f"The newest run, `{others[0].run_id}`, is {others[0].state}: it can be resumed from its view.")
        if st.button("Watch it", key="select_resumable", icon=":material/visibility:",
                     help=f"Make {others[0].run_id} the sidebar's selected run and show it here, with its Resume button."):
            sidebar.select_run(others[0].run_id)
            st.rerun()
    if run is None:
        st.info("No run selected: pick one in the sidebar to watch it here, or fill in the form and start one." if ctx.runs else
                "No run yet: fill in the form and start one.", icon=":material/model_training:")
    else:
        # the run as the sidebar and the runs table drew it
        drawn = progress_key(next((s for s in ctx.runs if s.run_id == run.run_id), None) or summarize(run))
        state = drawn[0]
        st.fragment(live_view, run_every=2 if state in ACTIVE_STATES else None)(run, drawn)  # polls only while alive

st.divider()
st.subheader("All runs")
if any(s.state in ACTIVE_STATES for s in ctx.runs):
    st.fragment(_all_runs_table, run_every=5)(tuple(progress_key(s) + (s.run_id,) for s in ctx.runs))
else:
    _all_runs_table(())
