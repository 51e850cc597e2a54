"""`python -m zs_llm.serve` (console script `zs-serve`): load a model, open the state folder, serve.

    python -m zs_llm.serve --model smollm2-135m-instruct --method zerosiam+clip --state_dir runs/serve \\
        --host 127.0.0.1 --port 8000 [--keys keys.txt] [--set max_new_tokens=128 ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from ..loading import EMBEDDED

    p = argparse.ArgumentParser(prog="python -m zs_llm.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=EMBEDDED, help="Hub id, local folder or .gguf file of the base model.")
    p.add_argument("--gguf_file", default=None, help="GGUF file inside --model's folder.")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the model's own).")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: the best available).")
    p.add_argument("--method", default="zerosiam+clip", help="Method spec of every stream, as the harness takes it "
                   "(e.g. zerosiam+clip, tent+clip+guard, noadapt).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="A method setting by its AdaptConfig name (repeatable), e.g. --set max_new_tokens=128.")
    p.add_argument("--state_dir", required=True, help="Folder of the streams' checkpoints (made if missing; a "
                   "restart on the same folder resumes every stream).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--keys", default=None, help="File of 'KEY STREAM' lines: the API key names the tenant's stream "
                   "(STREAM * is the operator's key). Without it: the request's `user` field, else one shared stream.")
    p.add_argument("--served_model_name", default=None, help="The model name clients send (default: --model's "
                   "last path part).")
    p.add_argument("--max_pool", type=int, default=8, help="Streams pooled into one round at most.")
    p.add_argument("--max_queue", type=int, default=64, help="Requests waiting at most; more get 429 + Retry-After.")
    p.add_argument("--max_streams", type=int, default=64, help="Streams hosted at most.")
    p.add_argument("--timeout", type=float, default=600.0, help="Seconds a request may wait for its round (then "
                   "504, unrun).")
    p.add_argument("--max_tokens", type=int, default=None, help="Largest max_tokens a request may ask (default: "
                   "the method's max_new_tokens, which is also the default per request).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    p.add_argument("--log_level", default="info", choices=("debug", "info", "warning", "error"))
    return p.parse_args(argv)


def build_config(method: str, sets: list[str]):
    """The streams' AdaptConfig: the method spec, then each --set KEY=VALUE; one-line errors."""
    from ..config import AdaptConfig, all_settings, check_field, parse_text

    cfg = AdaptConfig.from_spec(method)
    settings = all_settings()
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in settings or k in ("method", "method_args"):
            raise ValueError(f"--set {k}: no such setting; give the method in --method, and settings from "
                             f"{sorted(set(settings) - {'method'})}")
        value = check_field(settings[k], parse_text(v, settings[k].type))
        try:
            cfg = cfg.replace(**{k: value})
        except TypeError as e:
            raise ValueError(f"--set {k}: {e}") from None
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn

        from .app import create_app, read_keys
    except ImportError as e:
        sys.exit(f"zs_llm.serve needs FastAPI and uvicorn ({e}); install them with: pip install -e '.[serve]'")
    try:
        cfg = build_config(args.method, args.set)
        keys = read_keys(args.keys) if args.keys else None
        for name in ("max_pool", "max_queue", "max_streams"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if args.max_tokens is not None and args.max_tokens < 1:
            raise ValueError("--max_tokens must be at least 1")
    except (ValueError, KeyError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
    import torch

    from ..loading import load_model
    from ..model import ZeroSiamLM
    from .engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device)
    host = ZeroSiamLM(model, tokenizer, cfg)
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name
    try:
        engine = Engine(host, args.state_dir, name, max_pool=args.max_pool, max_queue=args.max_queue,
                        max_streams=args.max_streams, timeout=args.timeout, record={"model": str(args.model)})
    except ValueError as e:
        sys.exit(f"error: {e}")
    app = create_app(engine, keys, max_tokens_limit=args.max_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
