"""spriteforge run WORKFLOW.json: execute an exported ComfyUI workflow in-process.

WORKFLOW is the API format (Workflow > Export (API)) or the graph format (Workflow > Save);
the graph format is converted like the editor does. Only SpriteForge's nodes and the core
LoadImage / SaveImage / PreviewImage are available. Outputs go to --out (never overwritten).
Model names are looked up in --models DIR (or $SPRITEFORGE_MODELS), a folder laid out like
ComfyUI's models/; --print-api shows the prompt that would run without needing them.

Examples:
  spriteforge run example_workflows/sprite_pipeline.json --models ~/ComfyUI/models --out out/
  spriteforge run wf.json --set 12.seed=7 --set '6.positive="a knight, pixel art"'
  spriteforge run example_workflows/sprite_demo.json --engine mlx   (every Load Model node on MLX)
  spriteforge run example_workflows/api/sprite_demo.json --ray --seeds 0:1000 --prompts prompts.txt --out out/
      (a batch: one job per seed and prompt line on a Ray cluster; out/spriteforge_batch.jsonl lists the jobs done,
       so the same command again finishes an interrupted batch)
"""

from __future__ import annotations

import argparse
import json
import sys


def add_workflow_arguments(p) -> None:
    """WORKFLOW.json and ``--set``: the arguments ``spriteforge run`` and ``spriteforge submit`` share."""
    p.add_argument("workflow", metavar="WORKFLOW.json", help="workflow file (API format or graph format)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="override an input (VALUE is parsed as JSON when possible); repeatable")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run an exported workflow (API or graph JSON) in-process, without ComfyUI",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workflow_arguments(p)
    p.add_argument("--models", metavar="DIR", help="models root laid out like ComfyUI's models/ folder")
    p.add_argument("--out", metavar="DIR", default="output", help="output folder (default ./output)")
    p.add_argument("--input", metavar="DIR", help="LoadImage's input folder (default ./input, or the input/ folder "
                   "beside the workflow (or one level up) that holds its images)")
    p.add_argument("--engine", choices=("auto", "torch", "mlx"), default=None,
                   help="set the engine of every SpriteForge Load Model node (default: as the workflow says)")
    p.add_argument("--check", action="store_true", help="only convert and validate; do not execute")
    p.add_argument("--print-api", action="store_true", help="print the API-format prompt that would run, then exit")
    add_batch_arguments(p)
    p.set_defaults(func=run)


def add_batch_arguments(p) -> None:
    """The batch options: --seeds, --prompts and where they go, --ray and --workers."""
    g = p.add_argument_group("batches (one job per seed and prompt line; see README 'Batches at scale')")
    g.add_argument("--seeds", metavar="A:B[:STEP]", help="one job per seed A..B-1 (or a single seed N); a job of "
                   "batch_size N uses seed..seed+N-1, so step by N (0:800:8) for jobs that share no seed")
    g.add_argument("--prompts", metavar="FILE", help="one job per line of FILE (each seed with each line)")
    g.add_argument("--seed-input", metavar="NODE_ID.INPUT", help="the input --seeds sets (default: the workflow's "
                   "one generation seed)")
    g.add_argument("--prompt-input", metavar="NODE_ID.INPUT", help="the input each --prompts line replaces "
                   "(default: the one SpriteForgeEncodePrompt's 'positive')")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="run the jobs on a Ray cluster: "
                   "ADDRESS (e.g. auto, ray://head:10001) or 'local' (default) for one on this machine")
    g.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else CPUs/4)")
    g.add_argument("--manifest", metavar="FILE",
                   help="the batch's manifest, JSON Lines (default OUT/spriteforge_batch.jsonl)")


def shipped_input_dir(workflow, info=None):
    """The folder LoadImage should read when ``--input`` does not say: ``./input``
    when it holds the images the workflow loads, else an ``input/`` beside the workflow file or one level up
    (the shipped ``example_workflows/input`` for ``example_workflows/api/NAME.json``) that holds them all; None otherwise."""
    import os
    from pathlib import Path

    from ..execution import graph as G

    try:
        prompt, _graph = G.load_workflow(workflow, info)
    except Exception:  # reported properly when the run reads it
        return None
    wanted = {n["inputs"]["image"] for n in prompt.values()
              if n.get("class_type") == "LoadImage" and isinstance((n.get("inputs") or {}).get("image"), str)}
    if not wanted or not isinstance(workflow, (str, os.PathLike)):
        return None
    wf = Path(workflow).resolve()
    for d in (Path("input"), wf.parent / "input", wf.parent.parent / "input"):
        if all((d / w).is_file() for w in wanted):
            return None if d == Path("input") else str(d)
    return None


def _refuse_core_nodes(workflow) -> None:
    """A workflow with ComfyUI's core model nodes (Load Checkpoint, CLIP Text Encode, ...) runs only in ComfyUI:
    say so plainly instead of "unknown node type"."""
    from ..errors import BAD_INPUT, SpriteForgeError
    from ..execution import graph as G
    from ..execution.core_info import CORE_INFO

    try:  # the node types only: no schemas are built for this
        data = G.read_workflow(workflow)
        nodes = data["nodes"] if G.is_graph_format(data) else list(data.values())
        types = {n.get("type", n.get("class_type")) for n in nodes if isinstance(n, dict)}
    except Exception:  # reported properly when the run reads it
        return
    core = sorted(t for t in types & (set(CORE_INFO) - set(G.node_classes())) if isinstance(t, str))
    if core:
        raise SpriteForgeError(BAD_INPUT, f"this workflow uses ComfyUI's core nodes ({', '.join(core)}), which run only "
                               "inside ComfyUI. Open it in ComfyUI, or queue it on a running server with "
                               "`spriteforge submit WORKFLOW --server http://127.0.0.1:8188`.")


def _api_prompt(args) -> dict:
    """The API-format prompt ``args.workflow`` becomes (graph converted, ``--set`` and ``--engine`` applied),
    validated by nothing: what ``--print-api`` prints, and what a failed validation is explained against."""
    from ..execution import graph as G
    from ..execution.runner import set_engine
    from ..nodes.folders import Folders

    info = G.object_info(G.node_classes(folders=Folders(input=args.input or "input", output=args.out)))
    prompt, _graph = G.load_workflow(args.workflow, info)
    G.apply_overrides(prompt, args.sets, info)
    if args.engine:
        set_engine(prompt, args.engine)
    return prompt


def _check(args) -> int:
    """``--check``: convert and validate as a run would, execute nothing."""
    from .. import paths
    from ..nodes.folders import Folders
    from ..execution.runner import prepare

    folders = Folders(input=args.input or "input", output=args.out)
    with paths.models_root(args.models):
        prompt = prepare(args.workflow, folders, overrides=args.sets, engine=args.engine).prompt
    print(f"{args.workflow}: valid ({len(prompt)} nodes)")
    return 0


def _batch(args) -> int:
    """``--seeds`` / ``--prompts`` / ``--ray``: a batch, in-process or on Ray (execution.batch, execution.ray_batch)."""
    from ..execution import batch as B

    if args.ray:
        from ..execution.ray_batch import import_ray

        import_ray()  # without Ray: ENGINE_UNAVAILABLE with the install line, before any work
    seeds = B.parse_seeds(args.seeds) if args.seeds else None
    prompts = B.read_prompts(args.prompts) if args.prompts else None
    batch = B.plan(args.workflow, seeds=seeds, prompts=prompts, sets=args.sets, seed_spec=args.seed_input,
                   prompt_spec=args.prompt_input, engine=args.engine, models_dir=args.models, input_dir=args.input,
                   out=args.out, manifest_path=args.manifest)
    stream, events = None if args.quiet else sys.stderr, B.printer(sys.stderr)
    if args.ray:
        from ..execution.ray_batch import run_batch_ray

        res = run_batch_ray(batch, address=args.ray, workers=args.workers, on_event=events, stream=stream)
    else:
        res = B.run_batch(batch, on_event=events, stream=stream)
    print(f"{res['done']}/{res['jobs']} job(s) done, {res['failed']} failed, {res['files']} file(s); "
          f"manifest {res['manifest']}")
    return 0 if not res["failed"] else 1


def _execute(args) -> int:
    from ..execution.runner import run_workflow
    from ..paths import OutputFolder

    OutputFolder(args.out, label="--out").check()  # an existing file or a read-only place: refused before the run
    stream = None if args.quiet else sys.stderr
    res = run_workflow(args.workflow, overrides=args.sets, out_dir=args.out, input_dir=args.input,
                       models_dir=args.models, progress_stream=stream, engine=args.engine)
    for f in res.files:
        print(f)
    for nid, ui in res.outputs.items():
        for text in ui.get("text") or []:
            print(f"[node {nid}] {text}")
    if stream is not None:
        print(f"finished in {res.seconds:.1f}s: {len(res.executed)} node(s) run, {len(res.files)} file(s) written",
              file=stream)
    return 0


def run(args) -> int:
    from .. import paths
    from ..errors import SpriteForgeError
    from ._models import missing_models_error, models_dir

    args.models = models_dir(args.models)
    if not args.input:
        args.input = shipped_input_dir(args.workflow)
    _refuse_core_nodes(args.workflow)
    if args.print_api:  # the prompt as it would run; the models are not needed for that
        print(json.dumps(_api_prompt(args), indent=2))
        return 0
    try:
        if args.check:
            return _check(args)
        return _batch(args) if args.seeds or args.prompts or args.ray else _execute(args)
    except SpriteForgeError as exc:
        if not (exc.details or {}).get("issues"):
            raise
        with paths.models_root(args.models):
            missing = missing_models_error(exc, _api_prompt(args))
        raise (missing or exc) from None
