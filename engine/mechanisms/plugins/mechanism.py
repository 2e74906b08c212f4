"""Knowledge plugins as a :class:`~engine.mechanisms.base.Mechanism`: one or several plugins
(one per domain) injected together, as ``PluginInjector`` does."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from engine.mechanisms.base import LeaveOneOut, MechanismBase, MechanismError
from engine.mechanisms.plugins.attach import PluginInjector
from engine.mechanisms.plugins.io import load_plugin
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.mechanisms.registry import mechanism


class PluginMechanism(MechanismBase):
    """The plugged knowledge plugins; their vectors go before the entity mentions of a prompt."""

    spec = mechanism("plugins")

    def __init__(self, plugins: KnowledgePlugin | Sequence[KnowledgePlugin]) -> None:
        self.plugins = [plugins] if isinstance(plugins, KnowledgePlugin) else list(plugins)
        names = [p.name for p in self.plugins]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MechanismError(f"two plugged knowledge plugins are both named {twice[0]!r}: plug one plugin per domain")

    @contextmanager
    def attach(self, reader) -> Iterator[PluginInjector]:
        # The reader is not touched: the vectors enter through inputs_embeds of each forward.
        yield PluginInjector(reader, self.plugins)

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        """Each injected entity vector left out in turn (``texts``/``scores`` are not used:
        the parts are the entities the prompt mentions)."""
        loo = PluginInjector(reader, self.plugins).leave_one_out(prompt, answer)
        return LeaveOneOut(loo.logp_all, [loo.logp_all - (i.loo_delta or 0.0) for i in loo.injected], None,
                           parts=[i.entity for i in loo.injected])

    def save(self, folder: str | Path) -> Path:
        """Save the one plugged plugin (a plugin is one folder; save several one by one)."""
        if len(self.plugins) != 1:
            raise MechanismError(f"{len(self.plugins)} plugins are plugged: save each plugin into its own folder")
        return self.plugins[0].save(folder)

    @classmethod
    def load(cls, folder: str | Path, reader, pack=None) -> "PluginMechanism":
        return cls(load_plugin(folder, reader, pack))
