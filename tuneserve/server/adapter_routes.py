"""Adapter admin API (`admin` scope): tuneserve's own routes and vLLM's two, for existing clients."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneserve.server.adapter_checks import AdapterError, resolve_path
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.admission import authorize
from tuneserve.server.errors import BadRequestError

router = APIRouter()


class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name clients put in `model`.")
    path: str = Field(description="Adapter directory, absolute or relative to an adapter root.")
    force: bool = Field(False, description="Load even if it was trained on another base model.")
    pinned: bool = Field(False, description="Keep an engine slot: never evicted at any tier (at most --max-loras minus one).")


class VLLMLoadAdapter(BaseModel):
    lora_name: str
    lora_path: str


class VLLMUnloadAdapter(BaseModel):
    lora_name: str
    lora_int_id: int | None = Field(None, ge=0, le=2**63 - 1)


def registry(raw: Request) -> AdapterRegistry:
    authorize(raw, "admin")
    adapters = raw.app.state.serving.adapters
    if adapters is None:
        raise BadRequestError("this server runs without LoRA (--no-lora)")
    return adapters


def allowed_path(raw: Request, path: str) -> Path:
    return resolve_path(path, raw.app.state.config.adapter_root_dirs)


@router.post("/v1/adapters")
async def load_adapter(body: LoadAdapter, raw: Request):
    version = await registry(raw).load(body.name, allowed_path(raw, body.path), body.force, pinned=body.pinned)
    return version.describe()


@router.get("/v1/adapters")
async def list_adapters(raw: Request):
    adapters = registry(raw)
    engine_ids = sorted(await adapters.engine.list_loras())
    # No await from here on: the adapters and the file's status are one snapshot (a reconcile
    # finishing in between would report a file applied whose adapters are not listed yet).
    listing = {"data": [v.describe() for v in adapters.current.values()], "engine_ids": engine_ids}
    if raw.app.state.adapters_file is not None:
        listing["adapters_file"] = raw.app.state.adapters_file.status()
    return listing


@router.get("/v1/adapters/{name}")
async def get_adapter(name: str, raw: Request):
    return registry(raw).get(name).describe()


@router.delete("/v1/adapters/{name}")
async def delete_adapter(name: str, raw: Request):
    version = await registry(raw).unload(name)
    return {"name": name, "version": version.version, "deleted": True}


@router.post("/v1/load_lora_adapter")
async def vllm_load(body: VLLMLoadAdapter, raw: Request):
    adapters = registry(raw)
    if body.lora_name in adapters.current:  # vLLM's semantics: this route never replaces
        raise AdapterError(f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name")
    await adapters.load(body.lora_name, allowed_path(raw, body.lora_path))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def vllm_unload(body: VLLMUnloadAdapter, raw: Request):
    await registry(raw).unload(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
