"""The folder a `ZeroSiamLM` saves its adapted state into, and how it loads back:
`save_pretrained`, `push_to_hub` and `from_pretrained` (the wrapper's methods of those names call
these), the folder's config record, and the base probe that tells the base model it was saved on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import AdaptConfig

if TYPE_CHECKING:
    from .model import ZeroSiamLM

CONFIG_NAME = "zs_llm_config.json"
PREDICTOR_NAME = "predictor.safetensors"
EXTRA_NAME = "method_state.safetensors"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def save_pretrained(lm: ZeroSiamLM, directory: str | os.PathLike, push_to_hub: bool = False,
                    repo_id: str | None = None, card: dict | None = None, **hub_kwargs) -> None:
    """Save the adapted state: LoRA adapter, predictor, method state (safetensors) and the config.
    The adapter files are peft's own (`adapter_config.json`, `adapter_model.safetensors`), so
    `peft.PeftModel.from_pretrained(base, directory)` loads the LoRA part too.

    The files are written into a temporary folder beside `directory`, fsynced, and moved in
    one by one with the config last (it records each file's sha256): a folder whose config
    is present holds the files it names, and `from_pretrained` checks them and reads no
    other. Files an earlier save wrote into the same folder (listed in its config) that this
    one does not write are then removed; files zs_llm did not write are never touched.
    `push_to_hub` then uploads the folder to `repo_id` (default: the folder's name), as `push_to_hub` does.

    The base model is recorded portably (`zs_llm.card.base_model_record`: a hub id and revision,
    else the name it was loaded by and its fingerprint; never a cache path), in the config and in
    peft's `adapter_config.json`, and README.md is the adapter's model card (`zs_llm.card.model_card`;
    `card` adds the stream, accuracy and verdict, as the evaluation harness does)."""
    import shutil

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f".{d.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _move_in(tmp, d, _write_state(lm, tmp, card))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        _upload(d, repo_id or d.name, **hub_kwargs)


def _write_state(lm: ZeroSiamLM, tmp: Path, card: dict | None) -> dict[str, str]:
    """Write every file of a save into the empty folder `tmp`, the config (with each file's sha256)
    last; returns the files it lists (name -> sha256)."""
    from safetensors.torch import save_file

    from .card import base_model_record, model_card
    from .checkpoint import sha256_file

    if lm.peft is not None:
        own = lm.adapter_name or "default"
        was = lm.peft.active_adapter
        lm.peft.active_adapter = own  # peft's model card reads the active adapter's config
        try:
            lm.peft.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=[own])
        finally:
            lm.peft.active_adapter = was
        if own != "default":  # peft writes another adapter into a subfolder: this stream's goes on top
            for f in list((tmp / own).iterdir()):
                os.replace(f, tmp / f.name)
            (tmp / own).rmdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in lm.predictor.state_dict().items()},
              str(tmp / PREDICTOR_NAME))
    extra = lm.method.extra_state()
    if extra:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / EXTRA_NAME))
    probe = base_probe(lm.hf)
    base = base_model_record(lm.hf, probe)
    if (tmp / "adapter_config.json").is_file():  # peft wrote the path the base was loaded from
        peft_cfg = json.loads((tmp / "adapter_config.json").read_text())
        peft_cfg.update(base_model_name_or_path=base["hub_id"] or base["name"], revision=base["revision"])
        (tmp / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2, sort_keys=True))
    meta = {"adapt_config": lm.zs_config.to_dict(), "base_model": base["hub_id"] or base["name"],
            "gguf_file": base["gguf_file"], "base": base, "lora": lm.peft is not None,
            "hidden_size": lm.hidden_size, "base_probe": probe, "problems_seen": lm.problems_seen}
    (tmp / "README.md").write_text(model_card(meta, card))  # in place of peft's empty template
    meta["files"] = files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return files


def _move_in(tmp: Path, d: Path, files: dict[str, str]) -> None:
    """Move a written save (`files`, and its config) from `tmp` into `d`: fsynced, the config last
    (until it lands the folder reads as incomplete), then remove the files an earlier save wrote
    there that this one did not."""
    from .checkpoint import fsync_dir, fsync_tree

    fsync_tree(tmp)
    before = _written_files(d)  # what an earlier save wrote here: only those may be removed
    (d / CONFIG_NAME).unlink(missing_ok=True)
    fsync_dir(d)
    for name in files:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, d / name)
    os.replace(tmp / CONFIG_NAME, d / CONFIG_NAME)
    fsync_dir(d)
    for name in sorted(before - set(files)):  # another method's state would otherwise sit beside ours
        (d / name).unlink(missing_ok=True)
    fsync_dir(d)


def push_to_hub(lm: ZeroSiamLM, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload ZeroSiamLM adapter and predictor", revision: str | None = None):
    """Upload the adapted state (`save_pretrained`'s files: peft adapter, predictor, method state,
    config) to the Hub model repository `repo_id`, creating it if needed. Returns the commit info.
    `ZeroSiamLM.from_pretrained(repo_id)` loads it back."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        lm.save_pretrained(folder)
        return _upload(folder, repo_id, private=private, token=token, commit_message=commit_message,
                       revision=revision)

def from_pretrained(cls, directory: str | os.PathLike, model: nn.Module | None = None, tokenizer=None,
                    revision: str | None = None, check_base: bool = True, **load_kwargs) -> ZeroSiamLM:
    """Rebuild a wrapper from `save_pretrained` output: a local folder, or a Hub repository id
    (`owner/name`, not an existing path; downloaded with `huggingface_hub.snapshot_download`
    at `revision`, or read from the cache when the hub is unreachable: `HubUnreachableError`
    when it is not there). Without `model`, the base model recorded in the folder is loaded with
    `zs_llm.load_model` (`load_kwargs` go there). Files whose sha256 differs from the
    recorded one, and tensors holding NaN, infinity or an absurd magnitude, are refused with
    an error naming them. The base model must be the one the adapter was saved on (`base_probe`:
    its architecture, shapes and a sample of its weights, to bf16 precision); `check_base=False`
    loads it on another base anyway (e.g. a quantized copy)."""
    d, meta = _saved_folder(directory, revision)
    if model is not None and load_kwargs:
        raise ValueError(f"from_pretrained got {sorted(load_kwargs)} beside model=: they are loading options of "
                         "zs_llm.load_model, unused when model= is given (and the method and its settings come "
                         f"from {CONFIG_NAME}); drop them, or build ZeroSiamLM(model, tokenizer, AdaptConfig(...))")
    if model is None:
        model, tokenizer = _load_base(d, meta, load_kwargs)
    if tokenizer is None:
        raise ValueError("pass tokenizer= together with model=")
    _check_base(d, meta, model, check_base)
    lm = cls(model, tokenizer, meta["adapt_config"])
    try:
        _load_state(lm, d, meta["files"])
    except BaseException:  # a refused folder leaves `model` as it was given
        lm.drop_adapter()
        raise
    lm.problems_seen = meta.get("problems_seen", 0)
    return lm


def _saved_folder(directory: str | os.PathLike, revision: str | None) -> tuple[Path, dict]:
    """The local folder of a `save_pretrained` output (downloaded when `directory` is a Hub id) and
    its config, once every file it lists is there with the recorded sha256."""
    from .checkpoint import sha256_file

    d = Path(directory).expanduser()
    if not d.exists() and HUB_ID.fullmatch(str(directory)):
        from .loading import hub_download

        d = Path(hub_download(str(directory), revision=revision))
    if not (d / CONFIG_NAME).exists():
        raise FileNotFoundError(f"{d} holds no {CONFIG_NAME}: pass a folder written by ZeroSiamLM.save_pretrained "
                                "(a save that was cut short leaves none)")
    meta = read_saved_config(d)
    for name, digest in meta["files"].items():
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name} is missing (the save was cut short or the file deleted); save "
                                    "the adapter again")
        if digest is not None and sha256_file(d / name) != digest:
            raise ValueError(f"{d / name} is damaged (its sha256 differs from the one {CONFIG_NAME} recorded); "
                             "save the adapter again")
    return d, meta


def _load_base(d: Path, meta: dict, load_kwargs: dict):
    """The base model and tokenizer the folder records, loaded with `zs_llm.load_model`."""
    import inspect

    from .loading import load_model, named_model

    unknown = sorted(set(load_kwargs) - set(inspect.signature(load_model).parameters))
    if unknown:
        raise ValueError(f"from_pretrained got {unknown}, which are not loading options of zs_llm.load_model "
                         f"(the method and its settings come from {CONFIG_NAME}); drop them")
    if not meta.get("base_model"):
        raise ValueError(f"{d} does not record its base model; pass model= and tokenizer=")
    base = meta.get("base") or {}
    if base and not base.get("hub_id") and named_model(base.get("name")) is None \
            and not Path(str(base.get("name"))).expanduser().exists():
        raise FileNotFoundError(f"{d} was adapted on base model {base.get('name')!r} (fingerprint "
                                f"{base.get('fingerprint')}), which is not found from here; load that model "
                                "and pass model= and tokenizer= (its fingerprint is checked), or run from "
                                "where that name resolves")
    return load_model(meta["base_model"], gguf_file=meta.get("gguf_file"), **load_kwargs)


def _check_base(d: Path, meta: dict, model: nn.Module, check_base: bool) -> None:
    """Refuse a base model other than the one the folder was saved on (its hidden size, and with
    `check_base` its architecture, shapes and a sample of its weights)."""
    saved_h = meta.get("hidden_size")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if saved_h is not None and head is not None and head.weight.shape[1] != saved_h:
        raise ValueError(f"{d} was saved from a base model of hidden size {saved_h} ({meta.get('base_model')}); "
                         f"this {type(model).__name__} has {head.weight.shape[1]}: load it on the base it was "
                         "saved from")
    if check_base and meta.get("base_probe") is not None:
        differs = probe_mismatch(meta["base_probe"], base_probe(model))
        if differs:
            raise ValueError(f"{d} was saved on another base model than this one ({differs}; saved on "
                             f"{meta.get('base_model')}): load it on the base it was saved from, or pass "
                             "check_base=False to load it anyway")


def _load_state(lm: ZeroSiamLM, d: Path, files: dict) -> None:
    """Read the folder's adapter, predictor and method state into `lm`, each checked (finite,
    sane magnitudes, the names and shapes `lm` has) before anything is written."""
    from safetensors.torch import load_file

    from .checkpoint import check_tensors

    def read(name: str, allowed: dict | None = None) -> dict[str, torch.Tensor]:
        if name not in files:
            raise FileNotFoundError(f"{d / CONFIG_NAME} lists no {name}, which this method needs: the folder was "
                                    "saved by another method or configuration; save the adapter again")
        try:
            tensors = load_file(str(d / name))
        except Exception as e:  # noqa: BLE001 - safetensors has its own error types for a damaged header
            raise ValueError(f"{d / name} is not a readable safetensors file ({e})") from None
        check_tensors(tensors, str(d / name), allowed=allowed)
        return tensors

    adapter = read("adapter_model.safetensors") if lm.peft is not None else None
    predictor = read(PREDICTOR_NAME)
    live_extra = lm.method.extra_state()
    extra = read(EXTRA_NAME, lm.method.nonfinite_state) if live_extra else {}
    if adapter is not None:
        from peft import get_peft_model_state_dict

        _check_fits(d / "adapter_model.safetensors", adapter,
                    get_peft_model_state_dict(lm.peft, adapter_name=lm.adapter_name or "default"))
    _check_fits(d / PREDICTOR_NAME, predictor, lm.predictor.state_dict())
    _check_fits(d / EXTRA_NAME, extra, live_extra)
    with torch.no_grad():
        if adapter is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(lm.peft, {k: v.to(lm.device) for k, v in adapter.items()})
        lm.predictor.load_state_dict({k: v.to(lm.device) for k, v in predictor.items()})
        for k, v in live_extra.items():
            v.copy_(extra[k])


def _written_files(d: Path) -> set[str]:
    """The files an earlier `save_pretrained` into `d` wrote (its config's list); none when the
    config is absent or unreadable, so nothing of unknown origin is ever removed."""
    try:
        files = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return set()
    root = d.resolve()
    names = {n for n in files if isinstance(n, str) and n != CONFIG_NAME}
    return {n for n in names if (d / n).resolve().parent.is_relative_to(root)}


def read_saved_config(d: Path) -> dict[str, Any]:
    """The `zs_llm_config.json` of a saved folder, checked field by field; ValueError naming the
    file when it is not one that `save_pretrained` writes."""
    p = d / CONFIG_NAME
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is damaged ({e}); save the adapter again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("adapt_config"), dict):
        raise ValueError(f"{p} is damaged (no adapt_config record); save the adapter again")
    files = meta.get("files")
    if files is None:  # written before the list existed: what is there is what was saved
        files = {n: None for n in ("adapter_model.safetensors", PREDICTOR_NAME, EXTRA_NAME) if (d / n).exists()}
    if not isinstance(files, dict) or not all(isinstance(v, (str, type(None))) for v in files.values()):
        raise ValueError(f"{p} is damaged (its files record is not a name -> sha256 table); save the adapter again")
    meta["files"] = {n: v for n, v in files.items()}
    try:
        meta["adapt_config"] = AdaptConfig.from_dict(meta["adapt_config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{p} is damaged or from another zs_llm version (its adapt_config: {e}); save the adapter "
                         "again") from None
    return meta


def _check_fits(path: Path, saved: dict[str, torch.Tensor], live: dict[str, torch.Tensor]) -> None:
    """Refuse saved tensors that do not fit the wrapper they are loaded into, naming the first."""
    from .checkpoint import check_fits

    check_fits(path, saved, live, "load it with the base model and method it was saved with",
               "it was saved from a base model of another size; load it on the base it was saved from")


def _upload(folder: Path, repo_id: str, private: bool | None = None, token: str | None = None,
            commit_message: str = "Upload ZeroSiamLM adapter and predictor", revision: str | None = None):
    from huggingface_hub import HfApi

    from .loading import HubUnreachableError, hub_offline_reason

    why = hub_offline_reason()
    if why is not None:
        raise HubUnreachableError(f"cannot push to the hub repository {repo_id!r}: {why}. Save locally with "
                                  "lm.save_pretrained(folder) and upload that folder later, online")

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                             revision=revision)


#: base parameters a probe samples, and values sampled from each
PROBE_TENSORS, PROBE_VALUES = 16, 8


def base_probe(model: nn.Module) -> dict:
    """A small record of a base model that tells it from another: its architecture, the shapes of
    its parameters, and PROBE_VALUES values of PROBE_TENSORS of them spread over the model (LoRA
    parameters left out, so a wrapped model gives its base's probe). Reading a few values per
    tensor costs nothing even for an 8B model."""
    params = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    picked = sorted({round(i * (len(params) - 1) / max(PROBE_TENSORS - 1, 1)) for i in range(PROBE_TENSORS)})
    values = []
    with torch.no_grad():
        for i in picked:
            flat = params[i][1].detach().reshape(-1)
            idx = torch.tensor(spread(flat.numel(), PROBE_VALUES), device=flat.device)
            values.append([float(v) for v in flat[idx].float().cpu()])
    return {"model_type": getattr(getattr(model, "config", None), "model_type", None),
            "shapes": [list(p.shape) for _, p in params], "picked": picked, "values": values}


def spread(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over range(n), first and last included, in integer arithmetic (a
    float32 linspace rounds indices past 2**24 up, out of range)."""
    return [i * (n - 1) // max(k - 1, 1) for i in range(k)]


def probe_mismatch(saved: dict, live: dict) -> str | None:
    """What tells the base `live` from the one `saved` was taken of, or None. Values are compared to
    bf16 precision (a copy in another dtype is the same base); re-saved weights differ far more."""
    if saved.get("model_type") != live["model_type"]:
        return f"architecture {saved.get('model_type')!r}, this one {live['model_type']!r}"
    if saved.get("shapes") != live["shapes"]:
        return "other parameter shapes"
    if saved.get("picked") != live["picked"]:
        return "another parameter layout"
    a, b = torch.tensor(saved["values"]), torch.tensor(live["values"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-2, atol=1e-6):
        return "other weights"
    return None
