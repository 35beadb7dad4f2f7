"""Model preset selector for the Train tab: "custom" or a named preset of
training.config.PRESETS (e.g. "Thesis 7.1.1"), which fills the form's fields."""

from __future__ import annotations

from typing import Any, Callable

from explorer.qt import QtWidgets, Signal

CUSTOM = "custom"


class PresetPicker(QtWidgets.QComboBox):
    """Emits `chosen(dict)` with the form values of the preset picked; `sync(value_of)`
    shows which preset the form matches now (or "custom")."""

    chosen = Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        from training.config import PRESET_TITLES, PRESETS

        self._presets = PRESETS
        self.addItem(CUSTOM, None)
        for name in PRESETS:
            self.addItem(PRESET_TITLES.get(name, name), name)
        self.setToolTip(self._tooltip())
        self._syncing = False
        self.activated.connect(self._activated)

    def _tooltip(self) -> str:
        lines = ["Fill the form with a named preset (values the source does not state are the project's defaults):"]
        for name, p in self._presets.items():
            lines.append(f"<b>{self.itemText(self.findData(name))}</b>")
            for key, src in p["sources"].items():
                value = {**p["model"], **p["train"]}.get(key)
                lines.append(f"&nbsp;&nbsp;{key} = {value}: {src}")
        return "<br>".join(lines)

    def values(self, name: str) -> dict[str, Any]:
        p = self._presets[name]
        return {**p["model"], **p["train"]}

    def _activated(self, index: int) -> None:
        name = self.itemData(index)
        if name is not None:
            self.chosen.emit(self.values(name))

    def note(self, image_shape: tuple[int, ...]) -> str:
        """A line for the status bar about the preset now chosen and the workspace's images."""
        name = self.currentData()
        if name is None:
            return ""
        text = f"{self.currentText()} settings in the form"
        size = self._presets[name]["model"].get("input_size")
        if size and image_shape and any(s != size for s in image_shape):
            text += (f"; the preset's source used {size}-pixel inputs, this workspace holds "
                     f"{' × '.join(map(str, image_shape))} (set crop/resize on the Data tab to match)")
        return text

    def sync(self, value_of: Callable[[str], Any]) -> None:
        """Select the preset whose form values all equal the form's (input_size is not a
        form field: it follows the workspace), else "custom"."""
        match = 0
        for i in range(1, self.count()):
            values = self.values(self.itemData(i))
            try:
                if all(value_of(k) == v for k, v in values.items() if k != "input_size"):
                    match = i
                    break
            except KeyError:
                continue
        self.setCurrentIndex(match)
