"""The Gradio page and its API on top of app/engine.py; `musicgen-cfg demo` runs it (app/cli.py).

Two kinds of events share one concurrency group ("model", limit 1), so a lam change never lands in
the middle of a generation and one request at a time uses the models:
- page events (private to the browser): the Generate button fills the fixed 8 result slots, the lam
  slider applies theta(lam) in place as soon as it is released;
- the Measure button ("measure this lam": the example prompts x MEASURE_VARIATIONS, mean and 95% CI of
  each measure) adds a row to the page's table of this page's measurements, sorted by lam;
- API-only events (`/generate`, `/measure`, `/set_lambda`, `/info`), bound to hidden, unbounded inputs so that an
  out-of-range value reaches our validation and the client gets our message, not Gradio's bounds
  error, and with plain outputs (lists of files + a JSON summary) instead of the page's slot updates.
"""

import os
from collections.abc import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import gradio as gr  # noqa: E402

from app.engine import MEASURE_DURATION_S, MEASURE_SEED, MEASURE_VARIATIONS, Engine  # noqa: E402
from app.requests import (  # noqa: E402
    MAX_DURATION_S,
    MAX_PROMPT_CHARS,
    MAX_TEMPERATURE,
    MAX_VARIATIONS,
    MIN_DURATION_S,
    parse_measure,
    parse_request,
)
from musicgen_cfg.errors import UserError  # noqa: E402

QUEUE_SIZE = 16
DEFAULT_VARIATIONS = 4
DEFAULT_DURATION_S = 8.0
CONCURRENCY = {"concurrency_id": "model", "concurrency_limit": 1}
# What one set of 4 showed across 20 seed blocks: bench/set_spread.py -> bench/results/set_spread.json (the shipped
# theta_q / theta_d, the first example prompt, 8 s); rerun it and update these numbers when the shipped models change.
NOISY_SAMPLE_NOTE = (
    "**One set of variations is a noisy sample.** For one prompt and one λ, the diversity of a set of 4 swings "
    "widely across seeds (the shipped models, the jig prompt, 8 s, 20 seed blocks at λ = 0.5: reward diversity "
    "0.09–0.26, note level 0.19–0.48), more than the step from λ = 0 to λ = 0.5 moves its mean (+0.06 reward, "
    "+0.09 note level). To see what λ changes, "
    "**Measure this λ**: {prompts} example prompts × {variations} variations of {duration:g} s at fixed seeds, "
    "mean and 95 % bootstrap CI over the prompts; measure two λ and compare.")
MEASURE_COLUMNS = (("note_diversity", "note-level diversity"), ("diversity", "reward diversity"),
                   ("quality", "quality (judges)"))
CSS = """
.note {background: #fff6d6; border-left: 4px solid #e0a800; padding: 6px 12px; border-radius: 4px;}
#status {min-height: 3em;}
"""


def _user_errors(call):
    """Run call(); a UserError becomes gr.Error, which the page and the client show as one line."""
    try:
        return call()
    except UserError as err:
        raise gr.Error(str(err), print_exception=False) from None


class _Blocks(gr.Blocks):
    """gr.Blocks whose input checks answer in one line: Gradio's too-few-inputs check is a multi-line
    ValueError, which launch(show_error=False) hides from the client as {"error": null}; and a text input
    (the prompt) that is not a string is refused here, on the raw request, because gr.Textbox turns any
    JSON value into text (5, ['a'] and {'a': 1} would be generated as prompts)."""

    def validate_inputs(self, block_fn, inputs):
        where = f"/{block_fn.api_name or block_fn.name}"
        if len(inputs) < len(block_fn.inputs):
            names = [getattr(block, "label", None) or "?" for block in block_fn.inputs]
            raise gr.Error(f"{where} takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}",
                           print_exception=False)
        for block, value in zip(block_fn.inputs, inputs):
            if isinstance(block, gr.Textbox) and value is not None and not isinstance(value, str):
                raise gr.Error(f"{where}: {block.label or 'a text input'} must be a string, got "
                               f"{type(value).__name__} {str(value)[:40]}", print_exception=False)
        super().validate_inputs(block_fn, inputs)


def _unknown_endpoint_handler(blocks: gr.Blocks):
    """A FastAPI handler that answers a call of an API name the app does not serve with 404 and one line
    naming the ones it does (Gradio raises FnIndexInferError there, which reaches the client as HTTP 500)."""
    from fastapi.responses import JSONResponse

    def handler(request, err):
        served = ", ".join(f"/{fn.api_name}" for fn in blocks.fns.values()
                           if fn.api_name and fn.api_visibility == "public")
        name = request.path_params.get("api_name", "?")
        return JSONResponse({"error": f"no endpoint /{name}: this app serves {served}"}, status_code=404)

    return handler


def _endpoint_line(label: str, provenance: dict) -> str:
    beta = f", β = {provenance['beta']}" if provenance.get("beta") is not None else ""
    return f"- {label}{beta}: `{provenance['model']}` (sha256 {provenance['model_sha256'][:12]})"


def _models_markdown(engine: Engine) -> str:
    lines = [_endpoint_line("quality", engine.quality.provenance),
             _endpoint_line("diversity", engine.diversity.provenance)]
    if engine.base_endpoint is not None:
        lines.append(_endpoint_line(f"base (CFG comparison, γ = {engine.guidance_scale:g})",
                                    engine.base_endpoint.provenance))
    return "\n".join(lines)


def _set_diversity_line(measures: dict) -> str:
    """The reward and note-level diversity of one set (the summary's keys, engine.SET_MEASURES)."""
    if measures["diversity"] is not None:
        parts = [f"reward embedder **{measures['diversity']:.3f}** (mean pairwise 1 − cos)"]
    else:
        parts = [f"_{measures['diversity_note']}_"]
    if measures["note_diversity"] is not None:
        parts.append(f"note level **{measures['note_diversity']:.3f}** (mean of pitch class "
                     f"{measures['note_distance_pitch_class']:.2f}, interval {measures['note_distance_interval']:.2f}, "
                     f"rhythm {measures['note_distance_rhythm']:.2f}: total variation)")
    else:
        parts.append(f"_{measures['note_diversity_note']}_")
    if measures["degenerate_rate"]:
        parts.append(f"{measures['degenerate_rate']:.0%} of the takes are degenerate (they count 0)")
    return "; ".join(parts)


def _status_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
    parts = [f"**θ(λ = {summary['lambda']:g})**, no CFG (one pass): **{summary['time_s']:.2f} s** for "
             f"{len(seeds)} × {summary['duration']:g} s ({seed_text})",
             f"diversity of the set: {_set_diversity_line(summary)}"
             + (" — one set is a noisy sample: *Measure this λ* below" if len(seeds) > 1 else "")]
    base = summary.get("base")
    if base is not None:
        ratio = base["time_s"] / max(summary["time_s"], 1e-9)
        parts.append(f"**base + CFG (γ = {base['guidance_scale']:g})**, two passes: **{base['time_s']:.2f} s** "
                     f"({ratio:.1f}× the distilled model's time); diversity: {_set_diversity_line(base)}")
    return "\n\n".join(parts)


def _measure_markdown(results: list[dict]) -> str:
    """This page's measurements (engine.measure answers), one row per lam: mean [95% CI] of each measure."""
    if not results:
        return ""
    last = results[-1]
    rows = ["| λ | " + " | ".join(label for _, label in MEASURE_COLUMNS) + " | time |",
            "|---" * (len(MEASURE_COLUMNS) + 2) + "|"]
    for result in sorted(results, key=lambda r: r["lambda"]):
        cells = []
        for name, _ in MEASURE_COLUMNS:
            stats = result["metrics"].get(name)
            cells.append("–" if stats is None else f"{stats['mean']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]")
        rows.append(f"| {result['lambda']:g} | " + " | ".join(cells) + f" | {result['time_s']:.1f} s |")
    missing = "".join(f"\n\n_{why}_" for why in dict.fromkeys(last["not_measured"].values()))
    return (f"{len(last['prompts'])} prompts × {last['variations']} variations × {last['duration']:g} s, seeds from "
            f"{last['seed']}: mean [95 % bootstrap CI over prompts]\n\n" + "\n".join(rows) + missing)


def build_app(engine: Engine) -> gr.Blocks:
    """The Blocks page (not launched); `launch` queues and serves it: header, controls | results, and
    the API (generate, measure, set_lambda, info)."""

    def run(request, http_request: gr.Request, progress: gr.Progress):
        session = getattr(http_request, "session_hash", None)
        return engine.generate(request, session, lambda fraction, desc: progress(fraction, desc=desc))

    def measure(request, progress: gr.Progress):
        return engine.measure(request, lambda fraction, desc: progress(fraction, desc=desc))

    with _Blocks(title="musicgen-cfg: diversity-rewarded CFG distillation") as blocks:
        _header(engine)
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                controls = _controls(engine)
            with gr.Column(scale=3, min_width=420):
                results = _results(engine)
        _wire_page(engine, run, measure, controls, results)
        _api(engine, run, measure)
    return blocks


def _header(engine: Engine) -> None:
    """Title, what the slider does, the engine's notes and the served models."""
    gr.Markdown("## Diversity-rewarded CFG distillation: quality ⟷ diversity\n"
                "One distilled model, no classifier-free guidance at inference (one pass instead of two). "
                "The slider mixes the weights of the quality model and the diversity model: "
                "θ(λ) = (1 − λ)·θ_quality + λ·θ_diversity.")
    for note in engine.notes:
        gr.Markdown(f"**Note:** {note}", elem_classes="note")
    with gr.Accordion("Served models", open=False):
        gr.Markdown(_models_markdown(engine))


def _controls(engine: Engine) -> dict:
    """The left column: prompt, lambda, variations, duration, seed, sampling, compare, the button."""
    gamma = engine.guidance_scale
    prompt = gr.Textbox(label="Prompt", lines=2, max_length=MAX_PROMPT_CHARS,
                        placeholder=engine.examples[0], elem_id="prompt")
    gr.Examples([[p] for p in engine.examples], inputs=[prompt], label="Example prompts")
    lam = gr.Slider(0.0, 1.0, value=engine.lam, step=0.05, label="Quality ⟷ diversity (λ)",
                    info="0 = quality model, 1 = diversity model; weights are mixed in place, no reload",
                    elem_id="lam")
    lam_status = gr.Markdown(f"θ(λ = {engine.lam:g}) is loaded.")
    with gr.Row():
        variations = gr.Slider(1, MAX_VARIATIONS, value=DEFAULT_VARIATIONS, step=1, label="Variations",
                               elem_id="variations")
        duration = gr.Slider(MIN_DURATION_S, MAX_DURATION_S, value=DEFAULT_DURATION_S, step=0.5,
                             label="Duration (s)", elem_id="duration")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (variation i uses seed + i)")
        random_seed = gr.Checkbox(value=True, label="Random seed")
    with gr.Accordion("Advanced sampling", open=False):
        temperature = gr.Slider(0.05, MAX_TEMPERATURE, value=1.0, step=0.05, label="Temperature")
        top_k = gr.Slider(0, engine.cardinality, value=engine.default_top_k, step=1,
                          label="Top-k (0 = off: sample the full distribution)")
    compare = gr.Checkbox(
        value=False, interactive=gamma is not None,
        label=(f"Compare with the base model + CFG (γ = {gamma:g}): twice the compute"
               if gamma is not None else "Compare with base + CFG (start the app with --base DIR)"))
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    return {"prompt": prompt, "lam": lam, "lam_status": lam_status, "variations": variations, "duration": duration,
            "seed": seed, "random_seed": random_seed, "temperature": temperature, "top_k": top_k, "compare": compare,
            "button": button}


def _results(engine: Engine) -> dict:
    """The right column: status, one (player, picture) row per variation, the base + CFG players, details."""
    symbolic, gamma = engine.model.is_symbolic, engine.guidance_scale
    status = gr.Markdown("Results appear here: a player and a "
                         f"{'piano roll' if symbolic else 'spectrogram'} per variation.", elem_id="status")
    slots, audios, images = [], [], []
    for index in range(MAX_VARIATIONS):  # one row per variation: player | picture
        with gr.Row(visible=False, equal_height=True) as slot:
            audios.append(gr.Audio(type="filepath", interactive=False, label=f"Variation {index + 1}",
                                   min_width=240))
            images.append(gr.Image(type="filepath", interactive=False, show_label=False, height=170,
                                   label="piano roll" if symbolic else "spectrogram", min_width=300))
        slots.append(slot)
    with gr.Column(visible=False) as base_box:
        gr.Markdown(f"### Base model + CFG (γ = {gamma:g})" if gamma is not None else "")
        with gr.Row():
            base_audios = [gr.Audio(type="filepath", interactive=False, visible=False, min_width=200,
                                    label=f"Base + CFG {index + 1}") for index in range(MAX_VARIATIONS)]
    with gr.Accordion("Run details (JSON)", open=False):
        details = gr.JSON()
    gr.Markdown(NOISY_SAMPLE_NOTE.format(prompts=len(engine.examples), variations=MEASURE_VARIATIONS,
                                         duration=MEASURE_DURATION_S), elem_classes="note")
    measure_button = gr.Button("Measure this λ", elem_id="measure")
    measurements = gr.Markdown(elem_id="measurements")
    measured = gr.State([])  # this page's engine.measure answers
    return {"status": status, "slots": slots, "audios": audios, "images": images, "base_box": base_box,
            "base_audios": base_audios, "details": details, "measure_button": measure_button,
            "measurements": measurements, "measured": measured}


def _wire_page(engine: Engine, run, measure, controls: dict, results: dict) -> None:
    """The page's own (private) events: Generate fills the result rows; Measure adds a row to the table of
    measurements; releasing the slider applies lambda."""

    def ui_generate(prompt, lam, variations, duration, seed, random_seed, temperature, top_k, compare,
                    request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio finds the bar by this default)
        parsed = _user_errors(lambda: parse_request(engine.limits, prompt, lam, variations, duration,
                                                    -1 if random_seed else seed, temperature, top_k, compare))
        result = _user_errors(lambda: run(parsed, request, progress))
        shown = len(result.items)
        updates = [gr.Row(visible=i < shown) for i in range(MAX_VARIATIONS)]
        updates += [gr.Audio(value=str(result.items[i].audio) if i < shown else None) for i in range(MAX_VARIATIONS)]
        updates += [gr.Image(value=str(result.items[i].image) if i < shown else None) for i in range(MAX_VARIATIONS)]
        base_shown = len(result.base_items)
        updates.append(gr.Column(visible=base_shown > 0))
        updates += [gr.Audio(value=str(result.base_items[i].audio) if i < base_shown else None, visible=i < base_shown)
                    for i in range(MAX_VARIATIONS)]
        return [*updates, _status_markdown(result.summary), result.summary]

    inputs = ("prompt", "lam", "variations", "duration", "seed", "random_seed", "temperature", "top_k", "compare")
    r = results
    controls["button"].click(
        ui_generate, inputs=[controls[name] for name in inputs],
        outputs=[*r["slots"], *r["audios"], *r["images"], r["base_box"], *r["base_audios"], r["status"], r["details"]],
        show_progress_on=[r["status"]], api_visibility="private", **CONCURRENCY)

    def ui_measure(lam, measured, progress=gr.Progress()):  # noqa: B008 (Gradio finds the bar by this default)
        parsed = _user_errors(lambda: parse_measure(engine.limits, lam, len(engine.examples), MEASURE_VARIATIONS,
                                                    MEASURE_DURATION_S, MEASURE_SEED))
        measured = [*(m for m in measured if m["lambda"] != parsed.lam), _user_errors(lambda: measure(parsed, progress))]
        return _measure_markdown(measured), measured

    r["measure_button"].click(ui_measure, inputs=[controls["lam"], r["measured"]],
                              outputs=[r["measurements"], r["measured"]], show_progress_on=[r["measurements"]],
                              api_visibility="private", **CONCURRENCY)

    def ui_set_lambda(lam):
        milliseconds = _user_errors(lambda: engine.set_lambda(lam))
        return f"θ(λ = {lam:g}) applied in place in {milliseconds:.1f} ms (no reload)."

    controls["lam"].release(ui_set_lambda, inputs=[controls["lam"]], outputs=[controls["lam_status"]],
                            show_progress="hidden", api_visibility="private", **CONCURRENCY)


def _api(engine: Engine, run, measure) -> None:
    """The public API endpoints: generate, measure, set_lambda, info."""
    gamma = engine.guidance_scale
    # The API: hidden inputs without bounds (our validation speaks), plain outputs.
    with gr.Column(visible=False):
        api_inputs = [gr.Textbox(label="prompt"), gr.Number(engine.lam, label="lam"),
                      gr.Number(DEFAULT_VARIATIONS, label="variations"), gr.Number(DEFAULT_DURATION_S, label="duration"),
                      gr.Number(-1, label="seed"), gr.Number(1.0, label="temperature"),
                      gr.Number(engine.default_top_k, label="top_k"), gr.Checkbox(False, label="compare")]
        api_outputs = [gr.File(file_count="multiple", label="audio"), gr.File(file_count="multiple", label="images"),
                       gr.File(file_count="multiple", label="base_audio"), gr.JSON(label="summary")]
        api_lam = gr.Number(engine.lam, label="lam")
        api_json = gr.JSON(label="result")
        measure_inputs = [gr.Number(engine.lam, label="lam"), gr.Number(len(engine.examples), label="prompts"),
                          gr.Number(MEASURE_VARIATIONS, label="variations"),
                          gr.Number(MEASURE_DURATION_S, label="duration"), gr.Number(MEASURE_SEED, label="seed")]

    def generate(prompt, lam, variations, duration, seed, temperature, top_k, compare,
                 request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio finds the bar by this default)
        """Generate `variations` clips with theta(lam), one pass, no CFG (seed -1 = random; top_k 0 = off);
        with compare=True also with the base model under CFG. Returns (audio files, piano-roll or
        spectrogram images, base + CFG audio files, summary with seeds, times and diversity)."""
        parsed = _user_errors(lambda: parse_request(engine.limits, prompt, lam, variations, duration, seed, temperature,
                                                    top_k, compare))
        result = _user_errors(lambda: run(parsed, request, progress))
        return ([str(i.audio) for i in result.items], [str(i.image) for i in result.items],
                [str(i.audio) for i in result.base_items], result.summary)

    def measure_lambda(lam, prompts, variations, duration, seed, progress=gr.Progress()):  # noqa: B008
        """Measure theta(lam): the first `prompts` example prompts x `variations` of `duration` s (prompt i's
        variation j uses seed + i * variations + j; no files written). Returns {lambda, prompts, ..., served,
        metrics: {name: {mean, ci_low, ci_high, num_prompts}} (95% bootstrap CI over prompts), per_prompt,
        not_measured: {name: why}, time_s}."""
        parsed = _user_errors(lambda: parse_measure(engine.limits, lam, prompts, variations, duration, seed))
        return _user_errors(lambda: measure(parsed, progress))

    def set_lambda(lam):
        """Rewrite the served weights to theta(lam) = (1 - lam) theta_q + lam theta_d in place."""
        milliseconds = _user_errors(lambda: engine.set_lambda(lam))
        return {"lambda": engine.lam, "apply_ms": round(milliseconds, 3)}

    def info():
        """The served models (sources, sha256, beta, teacher gamma), the lambda now loaded and the provenance
        of theta(lambda) (as in the manifest lines), gamma of the comparison, and the limits."""
        with engine.lock:  # a generation in progress finishes first (the weights are in flux during set_lambda)
            served = engine.served_provenance()
        return {"lambda": served["lambda"], "served": served, "guidance_scale": gamma, "notes": engine.notes,
                "quality": engine.quality.record(), "diversity": engine.diversity.record(),
                "base": None if engine.base_endpoint is None else engine.base_endpoint.record(),
                "limits": {"variations": MAX_VARIATIONS, "prompt_chars": MAX_PROMPT_CHARS,
                           "duration_s": [MIN_DURATION_S, MAX_DURATION_S], "temperature_max": MAX_TEMPERATURE,
                           "top_k_max": engine.cardinality},
                "measure": {"prompts": list(engine.examples), "variations": MEASURE_VARIATIONS,
                            "duration_s": MEASURE_DURATION_S, "seed": MEASURE_SEED}}

    gr.on([], generate, inputs=api_inputs, outputs=api_outputs, api_name="generate", **CONCURRENCY)
    gr.on([], measure_lambda, inputs=measure_inputs, outputs=[api_json], api_name="measure", **CONCURRENCY)
    gr.on([], set_lambda, inputs=[api_lam], outputs=[api_json], api_name="set_lambda", **CONCURRENCY)
    gr.on([], info, inputs=[], outputs=[api_json], api_name="info", queue=False)


def launch(engine: Engine, host: str, port: int | None, share: bool = False, inbrowser: bool = False,
           prevent_thread_lock: bool = False, log: Callable[[str], None] = print) -> gr.Blocks:
    """Queue and serve the page. With prevent_thread_lock it returns at once (blocks.local_url,
    blocks.close()); otherwise it serves until Ctrl-C."""
    blocks = build_app(engine)
    blocks.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    from gradio.route_utils import FnIndexInferError

    try:
        # quiet: Gradio's banner tells users to edit launch() for a share link; our line names --share.
        blocks.launch(server_name=host, server_port=port, share=share, inbrowser=inbrowser, prevent_thread_lock=True,
                      allowed_paths=[str(engine.out_root)], show_error=False, ssr_mode=False, css=CSS,
                      footer_links=["api"], quiet=True,
                      app_kwargs={"exception_handlers": {FnIndexInferError: _unknown_endpoint_handler(blocks)}})
    except OSError as err:
        reason = str(err).splitlines()[0].split(". ")[0]  # Gradio goes on about launch() arguments
        raise UserError(f"cannot serve on {host}:{port or 'a port from 7860'}: {reason}") from None
    public = f", public link {blocks.share_url}" if blocks.share_url else " (no public link; --share makes one)"
    log(f"serving on {blocks.local_url}{public}")
    if not prevent_thread_lock:
        blocks.block_thread()
    return blocks
