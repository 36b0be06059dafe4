"""The `hubtools` command. Each subcommand's `--help` is its manual."""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG_ENDPOINT = ("The Hub is the one in HF_ENDPOINT (default https://huggingface.co); "
                    "the token is HF_TOKEN. For a local hub, e.g. HF_ENDPOINT=http://127.0.0.1:7860.")


def _hub_serve(args) -> int:
    from hubtools.localhub.server import serve
    timeouts = {k: v for k, v in (("header_timeout", args.header_timeout), ("body_timeout", args.body_timeout))
                if v is not None}
    serve(args.root, args.host, args.port, args.token or os.environ.get("HUBTOOLS_HUB_TOKEN"),
          allowed_hosts=args.allowed_host, **timeouts)
    return 0


def _hub_mirror(args) -> int:
    from hubtools.mirror import mirror
    report = mirror(args.src, args.dst, repos=args.repo, repo_type=args.repo_type,
                    src_token=os.environ.get(args.src_token_env), dst_token=os.environ.get(args.dst_token_env))
    for line in report:
        print(line)
    return 0


def _publish(args) -> int:
    from hubtools.publish import publish_checkpoint
    from model_cards import load_run_info
    info = load_run_info(args.card_info) if args.card_info else None
    result = publish_checkpoint(args.folder, args.repo, args.revision, card_info=info,
                                include_optimizer=args.include_optimizer, overwrite=args.overwrite,
                                move_latest=not args.no_latest, private=args.private)
    print(f"published {args.folder} → {result.url}")
    return 0


def _card(args) -> int:
    from model_cards import load_run_info, render_dataset_card, render_model_card
    info = load_run_info(args.info)
    card = render_model_card(info) if args.kind == "model" else render_dataset_card(info)
    text = str(card)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _build_dataset(args) -> int:
    from dataset_builders.registry import get_builder
    return get_builder(args.builder).run(args) or 0


def _demo(args) -> int:
    if bool(args.judge_model) != bool(args.judge_base_url):
        raise ValueError("--judge-model and --judge-base-url go together")
    if args.task == "factuality":
        from hubtools.demo.factuality import run
        run(args.workdir, model=args.model, quick=args.quick, serve=args.serve)
    else:  # rl_hard, geo: a served judge
        from importlib import import_module
        import_module(f"hubtools.demo.{args.task}").run(args.workdir, quick=args.quick, serve=args.serve,
                                                        judge_model=args.judge_model,
                                                        judge_base_url=args.judge_base_url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubtools", description=__doc__ or "hubtools",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    hub = sub.add_parser("hub", help="run or mirror a local Hub",
                         description="A local, Hub-compatible server and a mirror between hubs.")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    s = hub_sub.add_parser(
        "serve", help="serve a local Hub from a directory",
        description="Serve the Hub HTTP API (repos, branches, tags, commits, LFS uploads, downloads) from "
                    "DIR. Point huggingface_hub / transformers / datasets at it with "
                    "HF_ENDPOINT=http://HOST:PORT, and open http://HOST:PORT/ in a browser to read "
                    "repos, cards, datasets and the run view of step-N revisions. With a token, writes "
                    "need it and private repos are unreadable without it; without one the hub is open "
                    "to anyone on HOST.")
    s.add_argument("--root", required=True, help="directory holding the hub's database and blobs")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    s.add_argument("--token", help="token required for writes and private reads "
                                   "(or set HUBTOOLS_HUB_TOKEN, which keeps it out of `ps`)")
    s.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name clients use to reach the hub (repeatable). Bound to loopback, only "
                        "loopback names are answered unless listed here; bound elsewhere, any name is "
                        "answered unless this is given")
    s.add_argument("--header-timeout", type=float,
                   help="seconds a client has to send a request's headers (default 30)")
    s.add_argument("--body-timeout", type=float,
                   help="seconds a client may stall, sending a request body or reading an answer (default 60)")
    s.set_defaults(func=_hub_serve)

    m = hub_sub.add_parser(
        "mirror", help="copy repos with all branches, tags and cards to another hub",
        description="Copy repos from SRC_ENDPOINT to DST_ENDPOINT with their commit history on every "
                    "branch, their tags and cards. Re-running only copies what is new. DST may be "
                    "https://huggingface.co.")
    m.add_argument("src", metavar="SRC_ENDPOINT")
    m.add_argument("dst", metavar="DST_ENDPOINT")
    m.add_argument("--repo", action="append", help="repo id to copy (repeatable; default: every repo "
                                                   "of --repo-type on SRC)")
    m.add_argument("--repo-type", default="model", choices=["model", "dataset"],
                   help="type of the repos to copy (default model)")
    m.add_argument("--src-token-env", default="HF_TOKEN_SRC", help="env var holding SRC's token")
    m.add_argument("--dst-token-env", default="HF_TOKEN", help="env var holding DST's token")
    m.set_defaults(func=_hub_mirror)

    pub = sub.add_parser(
        "publish", help="publish a checkpoint folder as a revision",
        description="Upload a checkpoint folder to REPO at branch REVISION (created if missing) with a "
                    "model card, leaving optimizer/scheduler/RNG states out, and move the `latest` "
                    "branch to it. Refuses to overwrite an existing revision unless --overwrite.",
        epilog=_EPILOG_ENDPOINT)
    pub.add_argument("folder")
    pub.add_argument("--repo", required=True)
    pub.add_argument("--revision", required=True, help="branch to publish to, e.g. step-50")
    pub.add_argument("--card-info", help="run-info YAML for the model card (see examples/)")
    pub.add_argument("--include-optimizer", action="store_true", help="also upload optimizer/RNG states")
    pub.add_argument("--overwrite", action="store_true", help="replace an existing revision")
    pub.add_argument("--no-latest", action="store_true", help="do not move the `latest` branch")
    pub.add_argument("--private", action="store_true", help="create the repo private if it is new")
    pub.set_defaults(func=_publish)

    card = sub.add_parser("card", help="render a model or dataset card from a run-info YAML",
                          description="Render a Hub card (YAML metadata + body) from a run-info YAML "
                                      "file. Secrets in flags or commands are replaced by a placeholder.")
    card.add_argument("kind", choices=["model", "dataset"])
    card.add_argument("info", help="run-info YAML (see examples/grpo_step_card.yaml)")
    card.add_argument("-o", "--output", help="file to write (default: stdout)")
    card.set_defaults(func=_card)
    from dataset_builders.registry import BUILDERS, get_builder
    bd = sub.add_parser("build-dataset", help="build a filtered dataset and publish it with its card",
                        description="Build a dataset from a recipe and push it to the Hub with a dataset card "
                                    "(or save it locally).", epilog=_EPILOG_ENDPOINT)
    bd_sub = bd.add_subparsers(dest="builder", required=True)
    for name in BUILDERS:
        b = bd_sub.add_parser(name, help=f"the {name} dataset", epilog=_EPILOG_ENDPOINT,
                              description=(get_builder(name).__doc__ or "").strip().split("\n\n")[0])
        get_builder(name).add_arguments(b)
        b.set_defaults(func=_build_dataset)

    ev = sub.add_parser("eval", help="evaluate published revisions",
                        description="Evaluate model revisions on a task; results go into each revision's card.")
    ev_sub = ev.add_subparsers(dest="eval_task", required=True)
    from hubtools.eval import eval_module
    from hubtools.tasks import TASKS
    for name in sorted(TASKS):
        module = eval_module(name)
        task_parser = ev_sub.add_parser(name, help=(module.__doc__ or "").strip().split("\n")[0],
                                        formatter_class=argparse.RawDescriptionHelpFormatter,
                                        description=(module.__doc__ or "").strip(), epilog=_EPILOG_ENDPOINT)
        module.add_arguments(task_parser)
        task_parser.set_defaults(func=module.run)

    from hubtools.demo import DEMOS
    demo = sub.add_parser(
        "demo", help="run a task's whole loop offline on embedded defaults",
        description="Start a local hub (unless HF_ENDPOINT is set) and run a task's loop on the packaged models and "
                    "bundled data: build the dataset and publish it with its card, train, publishing each saved "
                    "step as revision step-N with its card, evaluate the published revisions (results into their "
                    "cards), load one back with from_pretrained(revision=...).\n\n"
                    "factuality (default): a just-hard-enough dataset sampled from the packaged "
                    "SmolLM2-135M-Instruct, GRPO of SmolLM2 on it.\n"
                    "rl_hard: the refiner; the packaged SmolLM2 served with `transformers serve` as judge and "
                    "rubric writer, a tiny policy fine-tuned on bundled reference answers, the rubric dataset "
                    "built with it, GRPO with rubric + citation + format rewards.\n"
                    "geo: GEO rewrites; the packaged SmolLM2 served with `transformers serve` as engine and "
                    "key-point judge and used as rewriter, the GEO dataset built with it, SFT of SmolLM2, "
                    "GRPO with the geo reward, eval of base, SFT and RL steps.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("task", nargs="?", default="factuality", choices=DEMOS, help="which loop (default factuality)")
    demo.add_argument("--workdir", help="where the hub, run and eval outputs go (default: a temp dir)")
    demo.add_argument("--model", default="smollm2", help="factuality: base model (default: the packaged SmolLM2)")
    demo.add_argument("--judge-model", help="rl_hard, geo: the judge's (geo: engine's) model name, as its server "
                                            "serves it")
    demo.add_argument("--judge-base-url", action="append", metavar="URL",
                      help="rl_hard, geo: an OpenAI-compatible judge (geo: engine) server (repeatable); default: "
                           "serve the packaged SmolLM2 here")
    demo.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke test of the wiring)")
    demo.add_argument("--serve", action="store_true",
                      help="keep the local hub up at the end, so the printed links open in a browser (Ctrl-C stops)")
    demo.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # bad input or a refused operation: no traceback
        if os.environ.get("HUBTOOLS_DEBUG"):
            raise
        print(f"hubtools {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
