"""``spriteforge submit``: queue a workflow on running ComfyUI servers and download the results."""

from __future__ import annotations

import argparse
import re
import sys

from .run import add_workflow_arguments

DESCRIPTION = """\
Queue a workflow on running ComfyUI servers and download what it saves.

Progress comes from the server's WebSocket; a refused workflow is explained node by node; the outputs
are downloaded into --out (a file already there is never replaced). --prompts FILE queues one run per
line, each replacing the positive prompt (--prompt-input NODE_ID.INPUT, default the first
SpriteForgeEncodePrompt's 'positive'). Give --server several times to spread a batch: each job goes to
the least-loaded server. A job whose server drops, or whose prompt the server loses (in neither its
queue nor its history), is queued again, on another server when there is one (--retries).
Every request ends after --http-timeout seconds however slowly a server answers, and --timeout bounds
everything, connecting included. Ctrl-C interrupts the runs on the servers.

examples:
  spriteforge submit example_workflows/api/txt2img.json --server http://127.0.0.1:8188 --out out/
  spriteforge submit example_workflows/sprite_demo.json --prompts prompts.txt \\
      --server http://gpu1:8188 --server http://gpu2:8188
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="queue a workflow on running ComfyUI servers and download the results",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workflow_arguments(p)
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="ComfyUI address, http://HOST:PORT (default http://127.0.0.1:8188); repeat to spread a "
                   "batch over servers")
    p.add_argument("--prompts", metavar="FILE", help="batch: one run per line of FILE (replaces the positive prompt)")
    p.add_argument("--prompt-input", metavar="NODE_ID.INPUT",
                   help="the input each --prompts line replaces (default: first SpriteForgeEncodePrompt's 'positive')")
    p.add_argument("--out", metavar="DIR", default="output", help="where downloaded outputs go (default ./output)")
    p.add_argument("--previews", action="store_true", help="also download preview (temp) images")
    p.add_argument("--max-inflight", type=int, default=2, metavar="N", help="jobs queued per server at once (default 2)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="times a job is queued again when its server drops or loses it (default 2)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="give up on what has not finished after this long, connecting included (default: no limit)")
    p.add_argument("--http-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="longest wait for one complete answer from a server (default 30; downloads at least 120)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import BAD_INPUT, CODES, ENGINE_INTERNAL, SpriteForgeError
    from ..execution.submit import load_prompts_file, submit_workflow

    if args.retries < 0:
        raise SpriteForgeError(BAD_INPUT, f"--retries is {args.retries}; give 0 or more.", details={"retries": args.retries})
    prompts = load_prompts_file(args.prompts) if args.prompts else None
    jobs = submit_workflow(
        args.workflow, args.servers or ["http://127.0.0.1:8188"], overrides=args.sets, prompts=prompts,
        prompt_input=args.prompt_input, out_dir=args.out, progress_stream=None if args.quiet else sys.stderr,
        max_inflight=args.max_inflight, max_attempts=1 + args.retries, timeout=args.timeout,
        http_timeout=args.http_timeout, download_temp=args.previews,
    )
    for job in jobs:
        for f in job.files:
            print(f)
        for nid, ui in (job.outputs or {}).items():
            for text in (ui or {}).get("text") or []:
                print(f"[node {nid}] {text}")
    failed = [j for j in jobs if j.status != "done"]
    if not failed:
        return 0
    if len(jobs) == 1:
        job = jobs[0]
        tag = re.search(r"\[([A-Z_]+)\]", job.error or "")
        code = job.code or (tag.group(1) if tag and tag.group(1) in CODES else ENGINE_INTERNAL)
        raise SpriteForgeError(code, f"the run on {job.server.url if job.server else 'the server'} failed: {job.error}",
                               hint="")
    for j in failed:
        print(f"job {j.label}: {j.status}: {j.error}", file=sys.stderr)
    print(f"{len(failed)} of {len(jobs)} job(s) did not finish.", file=sys.stderr)
    return 1
