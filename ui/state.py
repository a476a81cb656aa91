"""The scan being worked on, as one typed object in session state (``st.session_state["sc_current"]``)."""

from __future__ import annotations

import dataclasses
import hashlib

import streamlit as st

from segcore.auth import Identity
from segcore.display import WindowChoice
from segcore.refine import RefineConfig

KEY = "sc_current"


@dataclasses.dataclass(frozen=True)
class CurrentScan:
    """What Segment & compare shows and Correct edits: a scan (by content hash), a slice, a model, settings.

    ``window`` is the display choice only; ``refine`` the refinement settings the masks were made with.
    """

    key: str
    name: str
    model_version: str
    slice_index: int | None = None
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    window: WindowChoice = dataclasses.field(default_factory=WindowChoice)
    is_phantom_sample: bool = False  # a sample from the segmentation model's own (phantom CT) domain
    is_instance_sample: bool = False  # a sample from the instance model's own domain
    series_uid: str | None = None

    @property
    def scan_key(self) -> str:
        """What identifies the scan on screen: the upload's hash, plus the series picked from a multi-series zip.

        Use it for every cache and per-scan state; ``key`` only finds the uploaded bytes.
        """
        return f"{self.key}:{self.series_uid}" if self.series_uid else self.key

    @property
    def short(self) -> str:
        """12 characters naming ``scan_key`` in widget keys."""
        return hashlib.sha256(self.scan_key.encode()).hexdigest()[:12] if self.series_uid else self.key[:12]

    def describe(self) -> str:
        where = f" · slice {self.slice_index}" if self.slice_index is not None else ""
        return f"{self.name}{where} · model {self.model_version}"


def current() -> CurrentScan | None:
    return st.session_state.get(KEY)


def set_current(scan: CurrentScan) -> None:
    st.session_state[KEY] = scan


def update_current(**changes) -> CurrentScan | None:
    cur = current()
    if cur is not None:
        cur = dataclasses.replace(cur, **changes)
        set_current(cur)
    return cur


def set_identity(identity: Identity | None) -> None:
    st.session_state["sc_identity"] = identity


def identity() -> Identity | None:
    """Who is using the app this run: the signed-in user, or the self-declared name in local mode (ui.auth)."""
    return st.session_state.get("sc_identity")
