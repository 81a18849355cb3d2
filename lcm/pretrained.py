"""Shareable concept models: a folder with safetensors weights, JSON config, the sentence banks and a card.

    DIR/model.safetensors    the model's tensors (weights, normalizer, end-of-text / break vectors); no
                             optimizer state, nothing pickled
    DIR/config.json          {"format", "hyper_parameters", "lcm"}: what rebuilds the model and its inputs
    DIR/bank/, DIR/plan_bank/  the retrieval banks (faiss index, texts.json, embeddings.npy, manifest.json)
    DIR/README.md            a model card: data, encoder, metrics of the run, the command that trained it

A token baseline exports as a Hugging Face model folder instead (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json: `AutoModelForCausalLM` / `AutoTokenizer.
from_pretrained(DIR)` load it in plain transformers), with `lcm.json` ({"format", "hyper_parameters", "lcm"})
and the card beside them (`TokenLM.from_pretrained(DIR)`).

`export_checkpoint` writes one from an `lcm fit` checkpoint (`lcm export --ckpt CKPT DIR [--push OWNER/NAME]`);
`load_pretrained` reads it back (`ConceptGenerator.from_pretrained(DIR or OWNER/NAME)`). Loading reads JSON and
safetensors only, so a folder from someone else cannot run code.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from lcm.checkpoint import load_checkpoint, model_from_checkpoint, upgrade_hparams
from lcm.errors import LCMError
from lcm.io import atomic_dir, write_json

FORMAT = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
TOKEN_RECORD = "lcm.json"  # a token baseline's record, beside the Hugging Face files (lcm.token_model.RECORD)


def export_checkpoint(ckpt_path: str | Path, folder: str | Path) -> Path:
    """An `lcm fit` checkpoint (concept model, sentence decoder or token baseline; the banks beside it) -> a
    shareable folder."""
    from safetensors.torch import save_file

    ckpt_path, folder = Path(ckpt_path), Path(folder)
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt.get("lcm") or {}
    if not (meta.get("kind") in ("decoder", "token") or meta.get("encoder_id")):
        raise LCMError(f"{ckpt_path} is not a checkpoint written by `lcm fit` (no `lcm` record)")
    banks = [name for name in ("bank", "plan_bank") if (ckpt_path.parent / name / "manifest.json").is_file()]
    concept = meta.get("kind") not in ("decoder", "token")  # concept models need their banks to generate
    if concept and ("bank" not in banks or (meta.get("planning") and "plan_bank" not in banks)):
        raise LCMError(f"{ckpt_path.parent} lacks the sentence bank(s) of this checkpoint; rebuild them with "
                       f"`lcm validate -c CONFIG --ckpt_path {ckpt_path}` first")
    if folder.exists() and any(folder.iterdir()):
        raise LCMError(f"{folder} exists and is not empty; export into a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if meta.get("kind") == "token":
        return _export_token(ckpt_path, ckpt, folder)
    tensors = {k: v.detach().contiguous() for k, v in ckpt["state_dict"].items()}
    config = {"format": FORMAT, "hyper_parameters": upgrade_hparams(ckpt["hyper_parameters"]), "lcm": meta}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        write_json(tmp / CONFIG, config)
        for name in banks:
            shutil.copytree(ckpt_path.parent / name, tmp / name)
        (tmp / CARD).write_text(model_card(ckpt_path, config, len(tensors)), encoding="utf-8")
    return folder


def _export_token(ckpt_path: Path, ckpt: dict, folder: Path) -> Path:
    """A token-baseline checkpoint -> a Hugging Face model folder + `lcm.json` + the card."""
    from lcm.token_model import TokenLM

    model = model_from_checkpoint(TokenLM, ckpt, ckpt_path)
    model.on_load_checkpoint(ckpt)
    config = {"format": FORMAT, "hyper_parameters": upgrade_hparams(ckpt["hyper_parameters"]), "lcm": model.meta}
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        (tmp / CARD).write_text(model_card(ckpt_path, config, len(model.net.state_dict())), encoding="utf-8")
    return folder


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def resolve(name: str | Path) -> Path:
    """A local folder, or a Hugging Face hub model id ("owner/name") fetched into the hub cache (offline:
    found there if it was fetched before)."""
    path = Path(name)
    if path.exists():
        return path
    parts = str(name).split("/")
    if len(parts) != 2 or not all(parts) or str(name).startswith((".", "/")):
        raise LCMError(f"model folder {name} does not exist (nor is it a hub id such as owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name)))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no access: one line for all
        raise LCMError(f"{name} is no local folder and could not be fetched from the Hugging Face hub "
                       f"({_first_line(e)})") from e


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to a hub model repo (created if missing); returns its URL. Needs network
    and a token (`huggingface-cli login` or HF_TOKEN)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="lcm export")
    except Exception as e:  # noqa: BLE001 - offline, no token, no rights: one line, the folder is kept
        raise LCMError(f"could not push {folder} to the hub as {repo_id} ({_first_line(e)}); the folder is "
                       "written, push it later") from e
    return str(url)


def load_pretrained(folder: str | Path, model_class, kind: str | None = None):
    """(model, meta) from a folder written by `export_checkpoint`; `model_class(meta)` picks the class.
    `kind` ("decoder", "token"; None = a concept model) must match the exported model's."""
    from safetensors.torch import load_file

    folder = resolve(folder)
    if (folder / TOKEN_RECORD).is_file():  # a token baseline: Hugging Face files, the lcm record beside them
        kept = json.loads((folder / TOKEN_RECORD).read_text(encoding="utf-8")).get("lcm") or {}
        raise LCMError(f"{folder} holds a {kept.get('kind') or 'token'} model, not a {kind or 'concept'} model"
                       + ("; load it with TokenLM.from_pretrained" if kind == "token" else ""))
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        state = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as e:
        raise LCMError(f"{folder} is not an exported lcm-trainer model ({type(e).__name__}: {str(e)[:160]}); "
                       f"write one with `lcm export --ckpt CKPT {folder}`") from e
    if config.get("format") != FORMAT or not isinstance(config.get("lcm"), dict):
        raise LCMError(f"{folder}/{CONFIG} is not an lcm-trainer model config (format {config.get('format')!r})")
    meta = config["lcm"]
    if meta.get("kind") != kind:
        raise LCMError(f"{folder} holds a {meta.get('kind') or 'concept'} model, not a {kind or 'concept'} model")
    ckpt = {"hyper_parameters": config["hyper_parameters"], "state_dict": state}
    return model_from_checkpoint(model_class(meta), ckpt, folder), meta


def _last_validation(run_dir: Path) -> dict[str, float]:
    """The last logged value of every val/ metric in the run's metrics.csv ({} without one)."""
    out: dict[str, float] = {}
    path = run_dir / "metrics.csv"
    if path.is_file():
        for row in csv.DictReader(path.open(encoding="utf-8")):
            out.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)})
    return out


def model_card(ckpt_path: Path, config: dict, n_tensors: int) -> str:
    """README.md of an exported model: what it is, what it was trained on, how, and how well."""
    meta, run_dir = config["lcm"], ckpt_path.parent.parent
    run_config = run_dir / "config.yaml"
    data = ""
    if run_config.is_file():
        import yaml

        fit = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
        data = json.dumps((fit.get("data") or {}).get("init_args", fit.get("data")), default=str)[:600]
    metrics = _last_validation(run_dir)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())) or "| (no metrics.csv next to the run) | |"
    what = {"decoder": "A sentence decoder: it turns a sentence embedding back into text (`SentenceDecoderLM."
                       "from_pretrained`).",
            "token": "A token baseline: a Hugging Face causal LM (Llama) on the same documents rendered as text "
                     "(`TokenLM.from_pretrained`, or `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` in "
                     "plain transformers)."}
    name = {"decoder": "SentenceDecoderLM", "token": "TokenLM"}.get(meta.get("kind"))
    return f"""# {name or meta.get("model_class", "lcm.module.ConceptLM").rpartition(".")[2]} (lcm-trainer)

{what.get(meta.get("kind"), "A sentence-level concept model: it predicts the next sentence embedding of a reasoning "
"chain; generation reads predictions out through the sentence bank in `bank/`.")} Exported from `{ckpt_path}`
({n_tensors} tensors, no optimizer state).

- encoder: `{meta.get("encoder_id")}` (dimension {meta.get("dim")}); prompts split as `{meta.get("prompt_format",
"sentences")}`, sentences capped at {meta.get("max_chars")} characters
- planning: {bool(meta.get("planning"))}{f" (planner {meta.get('planner')})" if meta.get("planning") else ""}
- corpus (prepared store key): `{meta.get("corpus")}`
- data: `{data or "see the run's config.yaml"}`
- trained with: `lcm fit -c {run_config if run_config.is_file() else "CONFIG"}`

| validation metric (last epoch) | value |
|---|---|
{rows}

Use it: `ConceptGenerator.from_pretrained("THIS_FOLDER")` in Python, or
`lcm generate --pretrained THIS_FOLDER "problem text"`.
"""
