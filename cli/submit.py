"""``spriteforge submit WORKFLOW.json --server URL``: queue a workflow on running ComfyUI servers.

Progress comes from the server's /ws; a refused workflow is explained node by node; the outputs
are downloaded through /history and /view into --out (never overwriting). --prompts FILE queues
one run per line, each replacing the positive prompt (--prompt-input NODE_ID.INPUT, default the
first SpriteForgeEncodePrompt's 'positive'). Give --server several times to spread a batch: each
job goes to the least-loaded server, and a job whose server drops is retried on another.
Ctrl-C interrupts the runs on the servers.

Examples:
  spriteforge submit example_workflows/txt2img.api.json --server http://127.0.0.1:8188 --out out/
  spriteforge submit wf.json --prompts prompts.txt --server http://gpu1:8188 --server http://gpu2:8188
"""

from __future__ import annotations

import argparse
import sys

from .run import add_workflow_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="queue a workflow on running ComfyUI servers and download the results",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workflow_arguments(p)
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="ComfyUI address (default http://127.0.0.1:8188); repeat to spread a batch over servers")
    p.add_argument("--prompts", metavar="FILE", help="batch: one run per line of FILE (replaces the positive prompt)")
    p.add_argument("--prompt-input", metavar="NODE_ID.INPUT",
                   help="the input each --prompts line replaces (default: first SpriteForgeEncodePrompt's 'positive')")
    p.add_argument("--out", metavar="DIR", default="output", help="where downloaded outputs go (default ./output)")
    p.add_argument("--previews", action="store_true", help="also download preview (temp) images")
    p.add_argument("--max-inflight", type=int, default=2, metavar="N", help="jobs queued per server at once (default 2)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="times a job is retried on another server when its server drops (default 2)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: no limit)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import SpriteForgeError
    from ..execution.submit import load_prompts_file, submit_workflow

    prompts = load_prompts_file(args.prompts) if args.prompts else None
    stream = None if args.quiet else sys.stderr
    jobs = submit_workflow(
        args.workflow, args.servers or ["http://127.0.0.1:8188"], overrides=args.sets, prompts=prompts,
        prompt_input=args.prompt_input, out_dir=args.out, progress_stream=stream,
        max_inflight=max(1, args.max_inflight), max_attempts=1 + max(0, args.retries), timeout=args.timeout,
        download_temp=args.previews,
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
        code = "ENGINE_INTERNAL"
        import re

        m = re.search(r"\[([A-Z_]+)\]", job.error or "")
        from ..errors import CODES

        if m and m.group(1) in CODES:
            code = m.group(1)
        raise SpriteForgeError(code, f"the run on {job.server.url if job.server else 'the server'} failed: {job.error}",
                               hint="")
    for j in failed:
        print(f"job {j.label}: {j.status}: {j.error}", file=sys.stderr)
    print(f"{len(failed)} of {len(jobs)} job(s) did not finish.", file=sys.stderr)
    return 1
