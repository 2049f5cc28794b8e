"""The LoRA adapters resident in the engine: which adapter (by content key) sits in which slot.

The first `load` wraps the language model's linears (arch/lora_layers.py `attach_lora`) and gives
the runner the shared `LoraStep`; each adapter then gets a slot, and its pair for each linear it
targets is placed in that linear's wrapper (float32, as PEFT keeps adapters by default, on the
linear's device). A request names its adapter by content key (`Request.lora`), so an adapter
reloaded under the same name with other weights is another adapter: its prefix-cache blocks are
its own (the key seeds the block hashes, engine.py). Engine thread only.
"""

from __future__ import annotations

from torch import nn

from model_runtime.arch.lora_layers import LoraLinear, LoraStep, LoraWeights, attach_lora
from model_runtime.checkpoint.lora import LoraAdapter
from model_runtime.config import ConfigError
from model_runtime.engine.runner import ModelRunner


class LoraSlots:
    def __init__(self, model: nn.Module, runner: ModelRunner) -> None:
        self._model = model
        self._runner = runner
        self._linears: dict[str, LoraLinear] = {}  # module path -> its wrapper (after the first load)
        self.slots: dict[str, int] = {}  # adapter key -> slot
        self._next_slot = 0

    def slot(self, key: str | None) -> int | None:
        return None if key is None else self.slots[key]

    def load(self, adapter: LoraAdapter) -> int:
        """Make `adapter` resident (again a no-op if it is); its slot."""
        if adapter.key in self.slots:
            return self.slots[adapter.key]
        if not self._linears:
            step = LoraStep()
            self._linears = attach_lora(self._model, step)
            self._runner.lora_step = step
        unknown = sorted(set(adapter.weights) - set(self._linears))
        if unknown:
            raise ConfigError(f"{adapter.path}: no linear {unknown[0]} in this model")
        for path, pair in adapter.weights.items():
            linear = self._linears[path]
            if (pair.a.shape[1], pair.b.shape[0]) != (linear.in_features, linear.out_features):
                raise ConfigError(f"{adapter.path}: {path}: the adapter maps {pair.a.shape[1]} -> {pair.b.shape[0]}, "
                                  f"the model's linear {linear.in_features} -> {linear.out_features}")
        slot = self._next_slot
        self._next_slot += 1
        for path, pair in adapter.weights.items():
            device = self._device(self._linears[path])
            self._linears[path].adapters[slot] = LoraWeights(pair.a.float().to(device), pair.b.float().to(device),
                                                             pair.scaling)
        self.slots[adapter.key] = slot
        return slot

    def unload(self, key: str) -> None:
        slot = self.slots.pop(key)
        for linear in self._linears.values():
            linear.adapters.pop(slot, None)

    @staticmethod
    def _device(linear: LoraLinear):
        tensors = [*linear.base.parameters(), *linear.base.buffers()]
        return tensors[0].device if tensors else None
