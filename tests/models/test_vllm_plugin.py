"""tuneserve's vLLM plugin: installed on the vLLM it was verified on, stepping aside on others,
and the LoRA-ops choice read from the environment the server sets."""

import pytest
from vllm.platforms.cpu import CpuPlatform

from tuneserve.models import vllm_plugin
from tuneserve.models.vllm_lora import ENV


def test_on_an_unverified_vllm_nothing_is_patched_and_it_says_so(monkeypatch):
    warnings = []
    monkeypatch.setattr(vllm_plugin, "vllm_version", lambda: "0.99.0")
    monkeypatch.setattr(vllm_plugin.logger, "warning", lambda msg, *args: warnings.append(msg % args))
    for name in ("_patch_cpu_lora_logits", "_install_cpu_lora_kernels"):
        monkeypatch.setattr(vllm_plugin, name, lambda: pytest.fail("patched an unverified vLLM"))
    vllm_plugin.register()
    assert not vllm_plugin.plugin_active()
    assert len(warnings) == 1 and "0.99.0" in warnings[0] and "vLLM's own code runs" in warnings[0]


def test_the_cpu_punica_wrapper_follows_the_lora_kernels_choice(monkeypatch):
    vllm_plugin._install_cpu_lora_kernels()  # what register() does in every engine process
    vllm_plugin._install_cpu_lora_kernels()  # twice is harmless
    monkeypatch.delenv(ENV, raising=False)
    assert CpuPlatform.get_punica_wrapper() == "tuneserve.models.vllm_lora.GroupedPunicaWrapperCPU"
    monkeypatch.setenv(ENV, "vllm")
    assert CpuPlatform.get_punica_wrapper() == "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=ENV):
        CpuPlatform.get_punica_wrapper()
