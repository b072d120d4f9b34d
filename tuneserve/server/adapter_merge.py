"""Adapters merged per request: `model: "merge:dates+units"` (linear, equal weights),
`"merge:ties:dates*0.7+units*0.3"`, with PEFT's `add_weighted_adapter` (linear, cat, svd, ties,
dare_linear, dare_ties; DARE's random pruning is seeded, so a merge is the same every time).

A merge is built once, from the components' own sources, into the adapter cache under a hash of
its recipe and the components' files, and then served like any adapter loaded on first use (the
same snapshot and checks). A key may use a merge when it may use every component.
"""

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneserve.artifacts import Manifest, write_manifest
from tuneserve.models.identity import base_identity
from tuneserve.server.adapter_checks import AdapterError

METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties")
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties")  # PEFT combines these factor by factor
MERGE_REF = re.compile(rf"^merge:(?:({'|'.join(METHODS)}):)?([^:]+)$")
TERM = re.compile(r"^([^*+]+?)(?:\*([0-9]*\.?[0-9]+))?$")
DENSITY = 0.5  # of ties and dare: the share of each delta kept
SEED = 0
MAX_COMPONENTS = 8


@dataclass(frozen=True)
class MergeRecipe:
    method: str
    terms: tuple[tuple[str, float], ...]  # (adapter reference, weight)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.terms]


def parse_merge(ref: str) -> MergeRecipe | None:
    """The recipe of a `merge:` reference; None for any other reference; 400 for a malformed one."""
    match = MERGE_REF.match(ref)
    if match is None:
        if ref.startswith("merge:"):
            raise AdapterError(f"{ref!r}: expected merge:[METHOD:]A[*W]+B[*W]... with METHOD one of {', '.join(METHODS)}", param="model")
        return None
    terms = []
    for part in match[2].split("+"):
        term = TERM.match(part.strip())
        if term is None:
            raise AdapterError(f"{ref!r}: {part!r} is not ADAPTER or ADAPTER*WEIGHT", param="model")
        terms.append((term[1], float(term[2]) if term[2] else 1.0))
    names = [n for n, _ in terms]
    if not 2 <= len(terms) <= MAX_COMPONENTS or len(set(names)) != len(names):
        raise AdapterError(f"{ref!r}: give 2 to {MAX_COMPONENTS} different adapters", param="model")
    method = match[1] or "linear"
    if method == "linear":  # equal weights by default: each 1/N, so the merge stays an average
        terms = [(n, w if w != 1.0 or any(t[1] != 1.0 for t in terms) else 1.0 / len(terms)) for n, w in terms]
    return MergeRecipe(method, tuple(terms))


def check_components(recipe: MergeRecipe, dirs: dict[str, Path]) -> None:
    """The components share a base and fit the method's rank rule (400 naming them otherwise)."""
    configs = {name: json.loads((path / "adapter_config.json").read_text()) for name, path in dirs.items()}
    bases = {name: _base_of(path, configs[name]) for name, path in dirs.items()}
    if len(set(bases.values())) > 1:
        listed = ", ".join(f"{n}: {b}" for n, b in bases.items())
        raise AdapterError(f"the adapters of a merge must share a base model; {listed}", param="model")
    ranks = {name: c.get("r") for name, c in configs.items()}
    if recipe.method in SAME_RANK and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{n} r={r}" for n, r in ranks.items())
        raise AdapterError(f"merge method {recipe.method} needs adapters of one rank ({listed}); use svd or cat", param="model")


def _base_of(path: Path, config: dict) -> str:
    manifest = path / "tuneserve.json"
    if manifest.is_file():
        sha = json.loads(manifest.read_text()).get("base_model", {}).get("sha256")
        if sha:
            return f"fingerprint {sha[:12]}"
    return str(config.get("base_model_name_or_path") or "unknown")


def merge_key(recipe: MergeRecipe, dirs: dict[str, Path]) -> str:
    digest = hashlib.sha256(json.dumps([recipe.method, DENSITY, SEED, recipe.terms]).encode())
    for name in recipe.names:
        for file in sorted(p for p in dirs[name].iterdir() if p.is_file()):
            digest.update(file.name.encode() + file.read_bytes())
    return "merge-" + digest.hexdigest()[:32]


def build_merge(recipe: MergeRecipe, dirs: dict[str, Path], base_dir: Path, out: Path) -> None:
    """PEFT's add_weighted_adapter over the components on the base (float32), saved as a PEFT
    adapter directory with a manifest naming the base, the recipe and the parents."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    names = [f"a{i}" for i in range(len(recipe.terms))]  # PEFT adapter names: the references may hold any character
    peft = PeftModel.from_pretrained(model, dirs[recipe.names[0]], adapter_name=names[0])
    for local, (name, _) in zip(names[1:], recipe.terms[1:], strict=True):
        peft.load_adapter(dirs[name], adapter_name=local)
    torch.manual_seed(SEED)
    density = DENSITY if recipe.method.startswith(("ties", "dare")) else None
    peft.add_weighted_adapter(names, [w for _, w in recipe.terms], "merged", combination_type=recipe.method, density=density)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        peft.save_pretrained(work, selected_adapters=["merged"])
        saved = Path(work) / "merged"
        write_manifest(saved, Manifest(
            kind="adapter", base_model=base_identity(base_dir.name, base_dir), created_by="tuneserve serve (merge on request)",
            recipe={"merge": {"method": recipe.method, "terms": [list(t) for t in recipe.terms], "density": density, "seed": SEED}},
            parents=[str(dirs[n]) for n in recipe.names],
        ))
        saved.rename(out)
