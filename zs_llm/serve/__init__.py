"""An adapting, OpenAI-compatible server: each tenant is its own online stream on one model.

    python -m zs_llm.serve --model smollm2-135m-instruct --method zerosiam+clip --state_dir runs/serve

`Engine` (zs_llm.serve.engine) runs the pooled loop of `zs_llm.adapt` over a bounded queue and
checkpoints every stream after every update; `create_app` (zs_llm.serve.app) is the HTTP face
(FastAPI): /v1/chat/completions, /v1/completions, /v1/models, /v1/streams, /metrics, /health, /.
Install with the `serve` extra (`pip install -e ".[serve]"`).
"""

from .engine import Engine, Job, ServeError

__all__ = ["Engine", "Job", "ServeError", "create_app", "main"]


def create_app(*args, **kwargs):
    from .app import create_app as make

    return make(*args, **kwargs)


def main(argv=None):
    from .cli import main as run

    return run(argv)
