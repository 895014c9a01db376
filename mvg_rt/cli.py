"""``mvg-rt``: a thin command line over the job modules. No math lives here.

Errors the user can fix print one line and exit 2; anything else prints one line
and exits 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from mvg_rt.cli_types import DEVICE, FLOAT, INT, TEXT, Number, default_of
from mvg_rt.errors import EXIT_USAGE, MvgError, user_errors
from mvg_rt.io.stop_requests import INTERRUPTED, stop_requests


def _quiet_libraries() -> None:
    """Library progress bars and advice would drown the job's own progress."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """mvg-rt: fast, offline MVG disease-progression simulation (PIE + SEINE)."""
    ctx.obj = {"debug": debug}
    _quiet_libraries()


_REPORT_HELP = "Clinical report (UTF-8 text) of the expected terminal state: the disease prompt is made from it."
_LLM_OPTIONS = (
    click.option("--llm-url", help="Re-caption the report with an OpenAI-compatible LLM server on this machine "
                 "(llama.cpp, vLLM, Ollama), e.g. http://127.0.0.1:8080/v1; the rules' prompt is the fallback. "
                 "Default: the rules only."),
    click.option("--llm-model", help="Model to ask --llm-url for. Default: the first the server lists."),
    click.option("--llm-timeout", type=FLOAT, default=default_of("RecaptionSettings", "llm_timeout"),
                 show_default=True, help="Seconds to wait for each answer of --llm-url; then the rules' prompt is used."),
    click.option("--llm-allow-remote", is_flag=True,
                 help="Let --llm-url be another machine: the report (PHI) is sent there. Off: loopback only."),
)


def llm_options(command: click.Command) -> click.Command:
    """The --llm-* options of every verb that makes a prompt from a report (prompt, simulate, hence batch)."""
    for option in reversed(_LLM_OPTIONS):
        command = option(command)
    return command


@cli.command("prompt")
@click.option("--report", required=True, type=click.Path(dir_okay=False), help=_REPORT_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the prompt, how it was made, the findings kept and dropped and why.")
@llm_options
def prompt(**opts: object) -> None:
    """Print the disease prompt that simulate --report would use (on stderr: the findings kept and dropped)."""
    from mvg_rt.commands.prompt import run

    run(**opts)


@cli.command()
@click.option("--image", type=click.Path(dir_okay=False), help="Input PNG/JPEG/DICOM. Default: the bundled demo image.")
@click.option("--prompt", type=TEXT, help="Disease-state prompt, e.g. 'severe cardiomegaly'.")
@click.option("--report", type=click.Path(dir_okay=False),
              help=f"{_REPORT_HELP} Instead of --prompt (mvg-rt prompt --report shows the prompt).")
@click.option("--negative-prompt", type=TEXT, default=default_of("SimulationRequest", "negative_prompt"),
              show_default=True, help="Unconditional prompt for CFG.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), help="ROI mask image (same aspect ratio).")
@click.option("--roi-box", help="ROI box x0,y0,x1,y1 in input-image pixels.")
@click.option("--roi-ellipse", help="ROI ellipse cx,cy,rx,ry in input-image pixels.")
@click.option("--feather", type=FLOAT, default=default_of("RoiRequest", "feather"), show_default=True,
              help="Soft ROI edge width in pixels.")
@click.option("--segment", type=click.Path(file_okay=False),
              help="Segment the --roi-box with this segmenter (a SamModel folder such as MedSAM's, or a model folder "
              "with segmenter/): the ROI is the organ inside the box, not the box.")
@click.option("--segment-grow", type=FLOAT, default=default_of("RoiRequest", "grow"), show_default=True,
              help="With --segment: widen the segmented ROI by this many pixels (where a disease enlarges the organ).")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Diffusers-format SD 1.x folder. Default: embedded demo model.")
@click.option("--unet", "unet_dir", type=click.Path(file_okay=False), help="Domain-fine-tuned UNet folder.")
@click.option("--backend", type=click.Choice(["torch", "ort", "trt"]), default=default_of("RuntimeSpec", "backend"),
              show_default=True,
              help="torch: PyTorch over --model-dir; ort: ONNX Runtime / trt: TensorRT over --engines.")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), help="Engines folder from mvg-rt export.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              default=default_of("RuntimeSpec", "precision"), show_default=True,
              help="Which artifacts of --engines to run (torch on CUDA: the compute dtype; int8: the Q/DQ UNet of "
              "export --int8, the other networks at fp32 (ort) / fp16 (trt)).")
@click.option("--device", type=DEVICE, default=default_of("RuntimeSpec", "device"), show_default=True,
              help="cpu or cuda[:N].")
@click.option("--rounds", type=INT, default=default_of("PieSettings", "rounds"), show_default=True,
              help="PIE rounds N.")
@click.option("--strength", type=FLOAT, default=default_of("PieSettings", "strength"), show_default=True,
              help="Roll-back strength gamma.")
@click.option("--steps", type=INT, default=default_of("PieSettings", "steps"), show_default=True,
              help="Scheduler steps T per round.")
@click.option("--guidance", type=FLOAT, default=default_of("PieSettings", "guidance_scale"), show_default=True,
              help="CFG scale.")
@click.option("--beta1", type=FLOAT, default=default_of("PieSettings", "beta1"), show_default=True,
              help="Edit kept outside the ROI (Eq 6).")
@click.option("--beta2", type=FLOAT, default=default_of("PieSettings", "beta2"), show_default=True,
              help="Edit kept inside the ROI (Eq 6).")
@click.option("--scheduler", default=default_of("PieSettings", "scheduler"),
              help="pndm, ddim, ddpm, euler, euler-ancestral, dpm-multistep, lms. Default: the model's.")
@click.option("--seed", type=INT, default=default_of("SimulationOptions", "seed"), show_default=True)
@click.option("--resolution", type=INT, default=default_of("SimulationOptions", "resolution"),
              help="Model resolution (multiple of 8). Default: the model's.")
@click.option("--no-transition", is_flag=True, help="PIE states only: no SEINE transition clips.")
@click.option("--seine", type=click.Path(dir_okay=False), help="SEINE checkpoint. Default: <model-dir>/seine/.")
@click.option("--frames", type=INT, default=default_of("TransitionSettings", "frames"), show_default=True,
              help="Frames K per transition clip.")
@click.option("--transitions", type=click.Choice(["paper", "fast"]), default="paper", show_default=True,
              help="Transition preset. paper: SEINE's DDPM, 250 steps; fast: DDIM, 10 steps, about 20x "
                   "faster (README, Transition samplers).")
@click.option("--transition-steps", type=INT, help="SEINE sampling steps. Default: from --transitions.")
@click.option("--transition-sampler", type=click.Choice(["ddpm", "ddim", "dpm++2m", "unipc"]),
              help="SEINE sampler. Default: from --transitions.")
@click.option("--transition-guidance", type=FLOAT, default=default_of("TransitionSettings", "guidance_scale"),
              show_default=True, help="SEINE CFG scale.")
@click.option("--fps", type=FLOAT, default=default_of("SimulationOptions", "fps"), show_default=True,
              help="Frames per second of the MP4/GIF.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder. Default: runs/mvg-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out (only once the new run succeeded).")
@click.option("--record-paths", is_flag=True, help="Store input file paths in run.json (off: paths may identify patients).")
@click.option("--record-report", is_flag=True,
              help="Store the report's text (--report; batch: the report column) in run.json (off: its SHA-256 "
              "only; a report is PHI).")
@click.option("--cuda-graphs", is_flag=True,
              help="CUDA only: every denoising step after the first is a CUDA-graph replay (torch/trt: the whole step; "
              "ort: its own per-call graphs). Any scheduler that draws no noise, any transition sampler.")
@click.option("--low-memory", is_flag=True,
              help="--backend trt only (Jetson-class): load the TensorRT engines one stage at a time, decode one frame "
              "per call.")
@click.option("--tf32", is_flag=True, help="CUDA only: let FP32 matmuls/convolutions run as TF32 (faster, ~1e-3 "
              "relative). Off: --precision fp32 means FP32. Recorded in run.json.")
@click.option("--channels-last", is_flag=True,
              help="CUDA, --backend torch: run UNet and VAE in NHWC (cuDNN's native layout; same results).")
@llm_options
def simulate(**opts: object) -> None:
    """Simulate disease progression: N PIE rounds from IMAGE towards PROMPT inside the ROI, then SEINE
    transition clips between consecutive states, written as a video plus the state images."""
    from mvg_rt.commands.simulate import run

    context = click.get_current_context()
    explicit = {name for name in opts if context.get_parameter_source(name) != ParameterSource.DEFAULT}
    run(explicit=explicit, **opts)


@cli.command("segment")
@click.option("--segmenter", "--model-dir", "segmenter", type=click.Path(file_okay=False),
              help="A SamModel folder (MedSAM: wanglab/medsam-vit-base), or a model folder with segmenter/. "
              "Default: the demo segmenter (phantom hearts).")
@click.option("--image", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Input PNG/JPEG/DICOM.")
@click.option("--box", required=True, help="Box around the organ, x0,y0,x1,y1 in input-image pixels.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Mask PNG to write (0/255, the image's size): review and edit it, then simulate --mask.")
@click.option("--device", type=DEVICE, default=default_of("SegmentRequest", "device"), show_default=True,
              help="cpu or cuda[:N].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write what made the mask (segmenter fingerprint, box, IoU score, area) as JSON.")
@click.option("--record-paths", is_flag=True, help="Store the segmenter's path in --json (off: paths may identify "
              "a site).")
def segment(**opts: object) -> None:
    """Segment the organ inside a box with a SAM-architecture segmenter (MedSAM), as the paper makes its ROI;
    writes the mask for a person to review and edit."""
    from mvg_rt.commands.segment import run

    run(**opts)


@cli.command("export")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False), help="Diffusers-format SD 1.x folder.")
@click.option("--unet", "unet_dir", type=click.Path(file_okay=False), help="Domain-fine-tuned UNet folder.")
@click.option("--seine", type=click.Path(dir_okay=False),
              help="SEINE checkpoint (seine.pt or .safetensors). Default: <model-dir>/seine/ when present.")
@click.option("--no-seine", is_flag=True, help="Export the PIE networks only.")
@click.option("--seine-config", help="SEINE architecture: full, tiny or a JSON file. Default: from the checkpoint, else full.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Engines folder to write, e.g. engines/sd14.")
@click.option("--fp16", is_flag=True, help="Also write FP16 graphs (float32 inputs/outputs).")
@click.option("--fp16-converter", type=click.Choice(["ort", "modelopt"]),
              default=default_of("ExportRequest", "fp16_converter"), show_default=True,
              help="FP16 conversion: onnxruntime.transformers with a measured FP32 block list, or NVIDIA ModelOpt "
                   "AutoCast (needs nvidia-modelopt[onnx]).")
@click.option("--int8", is_flag=True,
              help="Also write the UNet's INT8 Q/DQ graph (static quantization calibrated on --calibration).")
@click.option("--calibration", "calibration_dir", type=click.Path(file_okay=False),
              help="INT8: folder of calibration images. Default: demo phantoms.")
@click.option("--calibration-prompt", "calibration_prompts", multiple=True,
              help="INT8: prompt(s) for the calibration runs (repeatable). Default: the phantoms' findings.")
@click.option("--calibration-count", type=INT, default=default_of("CalibrationSettings", "count"), show_default=True,
              help="INT8: calibration images (one PIE round each, its UNet inputs recorded).")
@click.option("--opset", type=INT, default=default_of("ExportRequest", "opset"), show_default=True, help="ONNX opset.")
@click.option("--slim/--no-slim", default=False, show_default=True,
              help="Clean the FP32 graphs up with onnxslim (fewer nodes; same outputs and ORT speed).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]),
              default=default_of("ExportRequest", "exporter"), show_default=True,
              help="torch.onnx.export path (dynamo=False / dynamo=True).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out (only once the new export succeeded).")
def export(**opts: object) -> None:
    """Export every network to ONNX (one file per component) plus manifest.json."""
    from mvg_rt.commands.export import run

    run(**opts)


@cli.command("check")
@click.option("--engines", "engines_dir", required=True, type=click.Path(file_okay=False), help="Engines folder.")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Reference model folder. Default: the manifest's.")
@click.option("--unet", "unet_dir", type=click.Path(file_okay=False), help="Fine-tuned UNet the engines came from.")
@click.option("--seine", type=click.Path(dir_okay=False), help="SEINE checkpoint the engines came from.")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default=default_of("CheckRequest", "backend"),
              show_default=True, help="Check the ONNX graphs (ONNX Runtime) or the TensorRT engines.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              default=default_of("CheckRequest", "precision"), show_default=True)
@click.option("--device", type=DEVICE, default=default_of("CheckRequest", "device"), show_default=True,
              help="Device of the checked backend: cpu or cuda[:N].")
@click.option("--rounds", type=INT, default=default_of("CheckRequest", "rounds"), show_default=True,
              help="PIE rounds of the end-to-end check.")
@click.option("--steps", type=INT, default=default_of("CheckRequest", "steps"), show_default=True,
              help="Scheduler steps of the end-to-end check.")
@click.option("--seed", type=INT, default=default_of("CheckRequest", "seed"), show_default=True)
@click.option("--skip-end-to-end", is_flag=True, help="Only the per-component comparison.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
def check(**opts: object) -> None:
    """Compare the engines with the PyTorch FP32 reference; exit 1 if a tolerance is exceeded."""
    from mvg_rt.commands.check import run

    run(**opts)


@cli.command("build")
@click.option("--engines", "engines_dir", required=True, type=click.Path(file_okay=False),
              help="Engines folder from mvg-rt export (engines/NAME); the .plan files are written into it.")
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8"]),
              default=default_of("BuildSettings", "precision"), show_default=True,
              help="fp16: from the FP16 ONNX, strongly typed (TensorRT 10 falls back to FP32 ONNX + FP16 flag); "
                   "fp32: from the FP32 ONNX, TF32 off; int8: the UNet's Q/DQ graph (export --int8).")
@click.option("--resolution", "resolutions", multiple=True,
              help="Image size N or HEIGHTxWIDTH the engines must take (repeatable). Default: the model's.")
@click.option("--frames", "frames", type=INT, multiple=True, default=default_of("ProfileSettings", "frames"),
              show_default=True, help="SEINE frames K (repeatable).")
@click.option("--axis", "axes", multiple=True,
              help="Profile of one axis: [component.]axis=min:opt:max or axis=N, e.g. unet.batch=2 (repeatable).")
@click.option("--static-batch", is_flag=True, help="UNet/SEINE take exactly the CFG pair (batch 2): no batch 1.")
@click.option("--decode-batch", type=INT, default=default_of("ProfileSettings", "decode_batch"), show_default=True,
              help="Largest VAE decode batch (frames per call).")
@click.option("--component", "components", multiple=True, help="Build only these components (repeatable). Default: all.")
@click.option("--workspace", "workspace_mb", type=INT, default=default_of("BuildSettings", "workspace_mb"),
              help="Builder workspace limit in MiB. Default: TensorRT's.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file. Default: <engines>/timing.cache.")
@click.option("--builder-level", type=INT, default=default_of("BuildSettings", "builder_level"), show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--low-memory", is_flag=True, help="Jetson-class: 1 GiB workspace, decode batch 1, no auxiliary streams.")
def build(**opts: object) -> None:
    """Build TensorRT engines (one .plan per component) from an engines folder's ONNX graphs."""
    from mvg_rt.commands.build import run

    run(**opts)


@cli.command("train-demo")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model folder to write.")
@click.option("--seed", type=INT, default=default_of("DemoTrainingConfig", "seed"), show_default=True)
@click.option("--scale", type=FLOAT, default=1.0, show_default=True, help="Multiply every step budget (quick runs).")
@click.option("--overwrite", is_flag=True, help="Replace --out (only once training succeeded).")
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path),
              help="Per-stage training checkpoints; the same command resumes from them. Default: "
                   "~/.cache/mvg-rt/train-demo.")
def train_demo(out: Path, seed: int, scale: float, overwrite: bool, checkpoints: Path | None) -> None:
    """Train the demo model (SD 1.x + SEINE architectures, toy widths) on chest X-ray phantoms."""
    from mvg_rt.commands.train_demo import run

    run(out, seed, scale, overwrite, checkpoints)


@cli.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder written by mvg-rt simulate.")
@click.option("--against", type=click.Path(file_okay=False, path_type=Path), help="A second run to compare with.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG: states strip + CTR.")
@click.option("--strip", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: the frames of one transition clip (--clip) with its verdict.")
@click.option("--clip", type=INT, default=1, show_default=True, help="Which clip --strip shows (1 = states 0-1).")
def evaluate(run_dir: Path, against: Path | None, json_path: Path | None, figure: Path | None, strip: Path | None,
             clip: int) -> None:
    """CTR trajectory, identity outside the ROI, per-round change, the transition standard per clip;
    PSNR/SSIM against a second run."""
    from mvg_rt.commands.evaluate import run

    run(run_dir, against, json_path, figure, strip, clip)


@cli.command("make-tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=INT, default=0, show_default=True)
def make_tiny_model(out_dir: Path, seed: int) -> None:
    """Write a random-init tiny SD 1.x-architecture model folder (for tests and docs)."""
    from mvg_rt.commands.make_tiny_model import run

    run(out_dir, seed)


@cli.command("bench")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["torch", "ort", "trt"]),
              default=default_of("BenchConfig", "backends"), show_default=True,
              help="Backends to compare (repeatable).")
@click.option("--device", type=DEVICE, default=default_of("BenchConfig", "device"), show_default=True,
              help="cpu or cuda[:N] (GPU: FP16 variants).")
@click.option("--cuda-graphs", is_flag=True, help="CUDA only: add the CUDA-graph variant of every backend.")
@click.option("--resolution", type=Number(integer=True, key="bench --resolution"),
              default=default_of("BenchConfig", "resolution"), show_default=True,
              help="Image size (multiple of 64).")
@click.option("--frames", type=INT, default=default_of("BenchConfig", "frames"), show_default=True,
              help="SEINE frames of the seine component.")
@click.option("--components", default=default_of("BenchConfig", "components", comma_list=True), show_default=True,
              help="Comma list of components to time (empty: none).")
@click.option("--e2e", is_flag=True, help="Also time PIE round, PIE run, transition clip, full simulation.")
@click.option("--peers", is_flag=True, help="Also run diffusers img2img eager, and the per-step overhead "
              "comparison on the tiny model.")
@click.option("--repeat", type=INT, default=default_of("BenchConfig", "repeat"), show_default=True,
              help="Timed calls per component.")
@click.option("--warmup", type=INT, default=default_of("BenchConfig", "warmup"), show_default=True,
              help="Untimed calls first.")
@click.option("--row-budget", type=FLOAT, default=default_of("BenchConfig", "row_budget_s"), show_default=True,
              help="Seconds of timed calls per component row after which timing stops (at least 2 calls).")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Diffusers-format SD 1.x folder (+ seine/). "
              "Default: the real architectures with random weights.")
@click.option("--size", type=click.Choice(["sd14", "tiny"]), default=default_of("BenchConfig", "size"),
              show_default=True,
              help="Random-weight architecture size without --model-dir.")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), help="Reuse this exported engines folder.")
@click.option("--cache", type=click.Path(file_okay=False), help="Cache for models/exports. Default: ~/.cache/mvg-rt/bench.")
@click.option("--out", type=click.Path(file_okay=False), default=default_of("BenchConfig", "out"), show_default=True,
              help="Folder for bench.json, bench.md, bench.png.")
@click.option("--rounds", type=INT, help="PIE rounds of the simulation. Default: 2 on CPU, 10 on CUDA.")
@click.option("--steps", type=INT, help="Scheduler steps T. Default: 20 on CPU, 50 on CUDA.")
@click.option("--strength", type=FLOAT, default=default_of("E2ESettings", "strength"), show_default=True)
@click.option("--guidance", type=FLOAT, default=default_of("E2ESettings", "guidance"), show_default=True)
@click.option("--seed", type=INT, default=default_of("E2ESettings", "seed"), show_default=True)
@click.option("--transition-frames", type=INT, help="Frames per clip end to end. Default: 4 on CPU, 16 on CUDA.")
@click.option("--transition-steps", type=INT, help="SEINE steps end to end. Default: 3 on CPU, 250 on CUDA.")
@click.option("--no-transitions", is_flag=True, help="End to end: PIE only.")
@click.option("--e2e-repeat", type=INT, help="Timed PIE rounds per pipeline. Default: 1 on CPU (3 tiny), 3 on CUDA.")
@click.option("--steppers", default=default_of("BenchConfig", "steppers", comma_list=True), show_default=True,
              help="PIE round rows: auto (the table step where the scheduler allows it, as simulate runs) and/or "
              "scheduler (diffusers' step).")
@click.option("--in-process/--isolate", "in_process", default=None,
              help="Measure in this process, or each variant in a fresh one. Default: isolate unless --size tiny.")
@click.option("--overhead-repeat", type=INT, default=default_of("BenchConfig", "overhead_repeat"), show_default=True,
              help="Rounds per overhead measurement.")
def bench(**opts: object) -> None:
    """Benchmark components and pipelines per backend against the PyTorch reference and peers."""
    from mvg_rt.commands.bench import run

    run(**opts)

# Options of simulate that batch does not share: each worklist row gives its own inputs and folder.
# The worklist has no segmenter column yet, so --segment and --segment-grow stay simulate's.
_PER_CASE = {"image", "prompt", "report", "mask_path", "roi_box", "roi_ellipse", "out", "overwrite", "segment",
             "segment_grow"}


@cli.command("batch")
@click.argument("worklist", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Batch folder: OUT/<case_id>/ per case, summary.csv and summary.json. Rerun to resume.")
@click.option("--redo", is_flag=True, help="Recompute cases whose folder holds results of other settings or "
              "inputs (each replaced only once its new run is complete).")
@click.option("--ray", metavar="local|auto|ADDRESS", help="Run the cases on Ray: local (start one here), auto "
              "(the running cluster) or a cluster address. Needs pip install mvg-rt[cluster].")
@click.option("--workers", type=INT, default=default_of("BatchRequest", "workers"),
              help="With --ray: actors to start (one per GPU or CPU slot). Default: all.")
@click.option("--retries", type=INT, default=default_of("BatchRequest", "retries"), show_default=True,
              help="With --ray: times a case lost with its worker is retried on another.")
@click.option("--case-timeout", type=FLOAT, metavar="SECONDS", default=default_of("BatchRequest", "case_timeout"),
              help="With --ray: a case still running after this long has its worker killed and replaced, and is "
              "retried (--retries) or failed. Default: none.")
def batch(**opts: object) -> None:
    """Simulate every case of a worklist (CSV or JSON Lines) into OUT/<case_id>/, resumably; the simulate
    options below are shared by every case, and a row may override its settings. Exit 0: every case
    succeeded; 3: some failed (see summary.csv); 2: the worklist or an option is invalid (nothing ran)."""
    from mvg_rt.commands.batch import run

    context = click.get_current_context()
    explicit = {name for name in opts if context.get_parameter_source(name) != ParameterSource.DEFAULT}
    run({param.name: param for param in context.command.params}, explicit=explicit, **opts)


batch.params.extend(param for param in simulate.params if param.name not in _PER_CASE)


REPORT = "report it to the mvg-rt maintainers with the --debug output"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line per error; exit 2 for problems the user or the machine can fix,
    130 when interrupted, 1 for bugs (with where to report them)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("MVG_RT_DEBUG") == "1"
    if not debug and not sys.warnoptions:
        warnings.simplefilter("ignore")  # library warnings (Pillow, torch) are not the user's business; --debug shows them
    try:
        with stop_requests(), user_errors():  # SIGTERM, SIGHUP, ... end a run like Ctrl-C, within seconds
            cli.main(args=argv, prog_name="mvg-rt", standalone_mode=False)
    except MvgError as err:
        click.echo(f"mvg-rt: error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout left (| head): nothing to tell it; exit 1 as rich and Python do
        try:  # no second error when the exit flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file descriptor (an in-process caller's buffer)
            pass
        sys.exit(1)
    except click.ClickException as err:  # usage errors: one line, with where to look
        command = err.ctx.command_path if getattr(err, "ctx", None) else "mvg-rt"
        click.echo(f"mvg-rt: error: {' '.join(err.format_message().split())} (see {command} --help)", err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - last line of defence: one line unless --debug
        if debug:
            raise
        message = " ".join(str(err).split())[:300]
        click.echo(f"mvg-rt: internal error (a bug in mvg-rt): {type(err).__name__}: {message} (rerun with --debug "
                   f"for the traceback and {REPORT})", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
