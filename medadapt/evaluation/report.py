"""Collect per-case scores and summarise them per prompt mode and class.

An evaluation run scores every case under several prompt modes (automatic,
box, 1-click...), so the unit of storage is one :class:`CaseResult` per
(case, mode, class). Everything else -- the summary, the terminal table, the
JSON and CSV files -- is derived from that list, so the per-case numbers are
always available to re-analyse later (significance tests, outlier hunting).

HD95 is nan where it is undefined (a class empty in the prediction or the
ground truth, see :mod:`medadapt.evaluation.metrics`). Summaries average HD95
over the non-nan values only and report how many were excluded, so a model that
misses a structure entirely is not rewarded silently: the exclusion count and
its Dice of 0 both show it. Files store nan as JSON ``null`` / an empty CSV cell,
because bare ``NaN`` is not valid JSON.

NSD (normalised surface Dice at ``nsd_tolerance``) is treated the same way: nan
where both boundaries are missing, averaged over the others, exclusions counted.

A report holds the metrics it was made with (``metrics``): Dice always, HD95
and NSD when asked for. One left out is nan in every result, by construction
rather than because a surface was missing: its summary has ``*_mean`` nan and
``*_excluded`` ``None``, its table no columns for it, and the CSV no ``nsd``
column for a report without NSD.

Units: ``hd95_unit`` is the unit of every distance in the report, HD95 and the
NSD tolerance alike: ``"mm"`` when the metrics had the voxel spacing, ``"px"``
when they did not (the table then says so under the numbers).

The table prints a spread (``± std``) only where it describes something: on a
class row, the population std over its cases when there are at least two; on a
mode's mean row, the spread of the per-class means when there are at least two
classes. With one case or one class there is no spread to show, and ``± 0.0000``
would read as "perfectly consistent".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import atomic_write_text

__all__ = ["CSV_HEADER", "CaseResult", "EvaluationReport"]

#: Columns of :meth:`EvaluationReport.to_csv`, in order; a report with NSD adds ``nsd`` after them.
CSV_HEADER: tuple[str, ...] = ("case_id", "mode", "class", "value", "dice", "hd95")

_FORMAT = "medadapt-evaluation"
_VERSION = 2  # 2: NSD (``nsd`` per case, ``nsd_tolerance``); version 1 files are read as before
_METRICS = ("dice", "hd95")  # the default, and what files written before `metrics` existed hold
_ALL_METRICS = ("dice", "hd95", "nsd")
_PIXEL_UNITS = ("px", "vox", "pixels", "voxels")


@dataclass(frozen=True)
class CaseResult:
    """Scores of one class of one case under one prompt mode.

    ``hd95`` and ``nsd`` may be nan (undefined or not computed, see the module
    docstring); ``dice`` and a non-nan ``nsd`` must be numbers in [0, 1], which
    :func:`~medadapt.evaluation.metrics.dice_per_class` and
    :func:`~medadapt.evaluation.metrics.surface_dice_per_class` always return.
    Values are checked on construction so a bad row fails where it is made, not
    later inside a mean.
    """

    case_id: str
    mode: str
    class_name: str
    class_value: int
    dice: float
    hd95: float
    nsd: float = math.nan

    def __post_init__(self) -> None:
        for field in ("case_id", "mode", "class_name"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise MedAdaptError(f"CaseResult.{field} must be a non-empty string, got {value!r}.")
        if isinstance(self.class_value, bool) or not isinstance(self.class_value, (int, np.integer)):
            raise MedAdaptError(f"CaseResult.class_value must be an integer, got {self.class_value!r}.")
        try:
            dice = float(self.dice)
            hd95 = float(self.hd95)
            nsd = float(self.nsd)
        except (TypeError, ValueError) as exc:
            raise MedAdaptError(
                f"dice, hd95 and nsd must be numbers, got dice={self.dice!r}, hd95={self.hd95!r}, nsd={self.nsd!r}."
            ) from exc
        if not (0.0 <= dice <= 1.0):  # also rejects nan
            raise MedAdaptError(f"dice must be in [0, 1], got {self.dice!r} for case {self.case_id!r}.")
        if not (math.isnan(hd95) or (math.isfinite(hd95) and hd95 >= 0.0)):
            raise MedAdaptError(
                f"hd95 must be a non-negative finite number or nan, got {self.hd95!r} "
                f"for case {self.case_id!r}."
            )
        if not (math.isnan(nsd) or 0.0 <= nsd <= 1.0):
            raise MedAdaptError(f"nsd must be in [0, 1] or nan, got {self.nsd!r} for case {self.case_id!r}.")
        # Normalise numpy scalars so asdict()/json see plain Python types.
        object.__setattr__(self, "class_value", int(self.class_value))
        object.__setattr__(self, "dice", dice)
        object.__setattr__(self, "hd95", hd95)
        object.__setattr__(self, "nsd", nsd)

    def to_row(self) -> dict[str, Any]:
        """The file representation: keys of :data:`CSV_HEADER` and ``nsd``, nan as ``None``."""
        return {
            "case_id": self.case_id,
            "mode": self.mode,
            "class": self.class_name,
            "value": self.class_value,
            "dice": self.dice,
            "hd95": None if math.isnan(self.hd95) else self.hd95,
            "nsd": None if math.isnan(self.nsd) else self.nsd,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CaseResult:
        """Inverse of :meth:`to_row`; missing keys raise :class:`MedAdaptError` (``nsd`` may be
        missing: rows written before NSD existed have none)."""
        missing = [k for k in CSV_HEADER if k not in row]
        if missing:
            raise MedAdaptError(f"evaluation row is missing {missing}: {dict(row)!r}.")
        hd95, nsd = row["hd95"], row.get("nsd")
        return cls(
            case_id=str(row["case_id"]),
            mode=str(row["mode"]),
            class_name=str(row["class"]),
            class_value=int(row["value"]),
            dice=float(row["dice"]),
            hd95=math.nan if hd95 is None or hd95 == "" else float(hd95),
            nsd=math.nan if nsd is None or nsd == "" else float(nsd),
        )


def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


class EvaluationReport:
    """Per-case results of an evaluation run, with summaries and file I/O.

    Args:
        results: initial results, in order.
        hd95_unit: unit of every distance (HD95 and the NSD tolerance), shown in the
            table and stored in JSON: ``"mm"`` when spacing was passed to the metrics,
            ``"px"``/``"vox"`` otherwise.
        metrics: the metrics computed: ``"dice"`` and any of ``"hd95"``, ``"nsd"``
            (default ``("dice", "hd95")``); a result's value of a metric left out must be nan.
        nsd_tolerance: the NSD tolerance in ``hd95_unit``; needed with ``"nsd"``,
            ignored (stored as ``None``) without it.
        cleanup: the clean-ups applied to the automatic label maps before scoring
            (see :mod:`medadapt.inference.cleanup`); stored in the JSON file.
        settings: what was scored and how (split, data, adapter, modes, ...), as
            :func:`~medadapt.evaluation.evaluate_run` records it; stored in the JSON file.

    Results keep insertion order; summaries list modes and classes in the order
    they were first added, so the table follows the order the run used.
    """

    def __init__(
        self,
        results: Iterable[CaseResult] = (),
        hd95_unit: str = "mm",
        metrics: Iterable[str] = _METRICS,
        nsd_tolerance: float | None = None,
        cleanup: Iterable[str] = (),
        settings: dict | None = None,
    ) -> None:
        self.hd95_unit = str(hd95_unit)
        self.settings = dict(settings or {})
        self.cleanup = tuple(str(c) for c in cleanup)
        self.metrics = tuple(dict.fromkeys(str(m) for m in metrics))
        if "dice" not in self.metrics or any(m not in _ALL_METRICS for m in self.metrics):
            raise MedAdaptError(
                f"metrics must be 'dice' and any of 'hd95', 'nsd' (e.g. ('dice', 'hd95')), got {self.metrics}."
            )
        self.nsd_tolerance: float | None = None
        if self.has_nsd:
            tol = nsd_tolerance
            if tol is None or isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(tol) and tol >= 0):
                raise MedAdaptError(
                    f"a report with NSD needs its tolerance (a distance >= 0 in {self.hd95_unit}), "
                    f"got nsd_tolerance={nsd_tolerance!r}."
                )
            self.nsd_tolerance = float(tol)
        self._results: list[CaseResult] = []
        self._keys: set[tuple[str, str, int]] = set()
        self._names: dict[int, str] = {}
        for r in results:
            self._append(r)

    # -- building -------------------------------------------------------------

    def _append(self, result: CaseResult) -> CaseResult:
        if not isinstance(result, CaseResult):
            raise MedAdaptError(f"expected a CaseResult, got {type(result).__name__}.")
        key = (result.case_id, result.mode, result.class_value)
        if not self.has_hd95 and not math.isnan(result.hd95):
            raise MedAdaptError(
                f"this report was made without HD95 (metrics={list(self.metrics)}); case {result.case_id!r} "
                f"has hd95={result.hd95}: pass nan, or make the report with metrics=('dice', 'hd95')."
            )
        if not self.has_nsd and not math.isnan(result.nsd):
            raise MedAdaptError(
                f"this report was made without NSD (metrics={list(self.metrics)}); case {result.case_id!r} "
                f"has nsd={result.nsd}: pass nan, or make the report with 'nsd' in metrics and its tolerance."
            )
        if key in self._keys:
            # A duplicate would double-weight one case in every mean.
            raise MedAdaptError(
                f"case {result.case_id!r}, mode {result.mode!r}, class value {result.class_value} "
                "is already in the report."
            )
        known = self._names.get(result.class_value)
        if known is not None and known != result.class_name:
            raise MedAdaptError(
                f"class value {result.class_value} is named {known!r} elsewhere in the report, "
                f"not {result.class_name!r}; use one name per label value."
            )
        self._names[result.class_value] = result.class_name
        self._keys.add(key)
        self._results.append(result)
        return result

    def add(
        self,
        case_id: str,
        mode: str,
        class_name: str,
        class_value: int,
        dice: float,
        hd95: float,
        nsd: float = math.nan,
    ) -> CaseResult:
        """Record one (case, mode, class) score and return it.

        Raises:
            MedAdaptError: invalid values, the same (case, mode, class value)
                twice, or one class value under two names.
        """
        return self._append(CaseResult(case_id, mode, class_name, class_value, dice, hd95, nsd))

    def add_case(
        self,
        case_id: str,
        mode: str,
        class_names: Mapping[int, str],
        dice: Mapping[int, float],
        hd95: Mapping[int, float],
        nsd: Mapping[int, float] | None = None,
    ) -> list[CaseResult]:
        """Record every class of one case, straight from the ``*_per_class`` dicts.

        ``class_names`` maps label value -> name and decides which classes are
        recorded; each must be present in ``dice`` and ``hd95``, and in ``nsd``
        when the report has NSD (``nsd=None`` records nan, for a report without).
        """
        if nsd is None and self.has_nsd:
            raise MedAdaptError(f"this report has NSD (metrics={list(self.metrics)}): pass nsd= for case {case_id!r}.")
        added = []
        for value, name in class_names.items():
            if value not in dice or value not in hd95 or (nsd is not None and value not in nsd):
                raise MedAdaptError(f"no dice/hd95/nsd score for class value {value} ({name!r}) of case {case_id!r}.")
            added.append(self.add(case_id, mode, name, value, dice[value], hd95[value],
                                  math.nan if nsd is None else nsd[value]))
        return added

    @property
    def has_hd95(self) -> bool:
        """Whether HD95 was computed (``"hd95" in metrics``)."""
        return "hd95" in self.metrics

    @property
    def has_nsd(self) -> bool:
        """Whether NSD was computed (``"nsd" in metrics``); its tolerance is :attr:`nsd_tolerance`."""
        return "nsd" in self.metrics

    @property
    def nsd_label(self) -> str:
        """The NSD column's name with its tolerance and unit, e.g. ``"NSD@2mm"`` (``"NSD"`` without NSD)."""
        return f"NSD@{self.nsd_tolerance:g}{self.hd95_unit}" if self.nsd_tolerance is not None else "NSD"

    @property
    def results(self) -> list[CaseResult]:
        """A copy of the per-case results, in insertion order."""
        return list(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[CaseResult]:
        return iter(list(self._results))

    @property
    def modes(self) -> list[str]:
        """Prompt modes in first-seen order."""
        return list(dict.fromkeys(r.mode for r in self._results))

    # -- summarising ----------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """One row per (mode, class), then a ``"mean"`` row per mode.

        Row keys: ``mode``, ``class``, ``value`` (``None`` on mean rows),
        ``dice_mean``, ``dice_std`` (population std, ddof=0, so one case gives
        0 rather than nan), ``hd95_mean`` (over non-nan values; nan if none),
        ``n`` (cases), ``hd95_excluded`` (cases whose HD95 was nan; ``None``
        when the report has no HD95, see ``metrics``), and likewise
        ``nsd_mean`` and ``nsd_excluded`` for NSD.

        The mean row is the unweighted mean of the per-class means, so a small
        structure counts as much as a large one (the usual "mean Dice" in
        papers). Its ``dice_std`` is the spread of those per-class means, its
        ``hd95_mean`` (``nsd_mean``) averages the classes that have one, its ``n``
        is the number of distinct cases and ``*_excluded`` the total exclusions.
        """
        rows: list[dict[str, Any]] = []
        for mode in self.modes:
            in_mode = [r for r in self._results if r.mode == mode]
            class_rows = []
            for value in dict.fromkeys(r.class_value for r in in_mode):
                group = [r for r in in_mode if r.class_value == value]
                dice = np.array([r.dice for r in group], dtype=np.float64)
                hd = np.array([r.hd95 for r in group], dtype=np.float64)
                valid = hd[~np.isnan(hd)]
                nsd = np.array([r.nsd for r in group], dtype=np.float64)
                nsd_valid = nsd[~np.isnan(nsd)]
                class_rows.append(
                    {
                        "mode": mode,
                        "class": self._names[value],
                        "value": value,
                        "dice_mean": float(dice.mean()),
                        "dice_std": float(dice.std()),
                        "hd95_mean": float(valid.mean()) if valid.size else math.nan,
                        "n": len(group),
                        "hd95_excluded": int(hd.size - valid.size) if self.has_hd95 else None,
                        "nsd_mean": float(nsd_valid.mean()) if nsd_valid.size else math.nan,
                        "nsd_excluded": int(nsd.size - nsd_valid.size) if self.has_nsd else None,
                    }
                )
            rows.extend(class_rows)
            class_dice = np.array([r["dice_mean"] for r in class_rows], dtype=np.float64)
            class_hd = np.array([r["hd95_mean"] for r in class_rows], dtype=np.float64)
            class_hd = class_hd[~np.isnan(class_hd)]
            class_nsd = np.array([r["nsd_mean"] for r in class_rows], dtype=np.float64)
            class_nsd = class_nsd[~np.isnan(class_nsd)]
            rows.append(
                {
                    "mode": mode,
                    "class": "mean",
                    "value": None,
                    "dice_mean": float(class_dice.mean()),
                    "dice_std": float(class_dice.std()),
                    "hd95_mean": float(class_hd.mean()) if class_hd.size else math.nan,
                    "n": len({r.case_id for r in in_mode}),
                    "hd95_excluded": sum(r["hd95_excluded"] for r in class_rows) if self.has_hd95 else None,
                    "nsd_mean": float(class_nsd.mean()) if class_nsd.size else math.nan,
                    "nsd_excluded": sum(r["nsd_excluded"] for r in class_rows) if self.has_nsd else None,
                }
            )
        return rows

    def table(self) -> str:
        """A plain-text table for the terminal: one line per summary row.

        HD95 shows "n/a" when no case had a defined value; the "n/a" column
        counts the cases left out of the HD95 mean. NSD likewise, its header
        naming the tolerance and unit (``NSD@2mm``). A report without HD95 (NSD)
        has neither of its columns. Distances in pixels are said so in a line
        under the table. The spread after "±" is shown only where it is defined
        (see the module docstring): a class row needs two cases, a mean row two
        classes; elsewhere the cell holds the mean alone.
        """
        rows = self.summary()
        classes_in_mode = {m: sum(1 for r in rows if r["mode"] == m and r["value"] is not None) for m in self.modes}

        def dice_cell(row: dict[str, Any]) -> str:
            spread = classes_in_mode[row["mode"]] > 1 if row["value"] is None else row["n"] > 1
            mean = f"{row['dice_mean']:.4f}"
            # padded on the right so that means line up in the right-aligned column
            return f"{mean} ± {row['dice_std']:.4f}" if spread else mean.ljust(len(mean) + len(" ± 0.0000"))

        header: tuple[str, ...] = ("mode", "class", "Dice (mean±std)", f"HD95 ({self.hd95_unit})", "HD95 n/a",
                                   self.nsd_label, "NSD n/a", "n")
        body = [
            (
                row["mode"],
                row["class"],
                dice_cell(row),
                "n/a" if math.isnan(row["hd95_mean"]) else f"{row['hd95_mean']:.2f}",
                str(row["hd95_excluded"]),
                "n/a" if math.isnan(row["nsd_mean"]) else f"{row['nsd_mean']:.4f}",
                str(row["nsd_excluded"]),
                str(row["n"]),
            )
            for row in rows
        ]
        if not body:
            return "(no evaluation results)"
        # Text columns left-aligned, numbers right-aligned.
        align = ["<", "<", ">", ">", ">", ">", ">", ">"]
        keep = (0, 1, 2, *((3, 4) if self.has_hd95 else ()), *((5, 6) if self.has_nsd else ()), 7)
        header, align = tuple(header[i] for i in keep), [align[i] for i in keep]
        body = [tuple(cells[i] for i in keep) for cells in body]
        widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        previous_mode = None
        for cells in body:
            if previous_mode is not None and cells[0] != previous_mode:
                lines.append("")  # blank line between modes
            previous_mode = cells[0]
            lines.append(fmt(cells))
        if (self.has_hd95 or self.has_nsd) and self.hd95_unit in _PIXEL_UNITS:
            what = " and ".join(n for n, has in (("HD95", self.has_hd95), ("the NSD tolerance", self.has_nsd)) if has)
            lines += ["", f"{what} in pixels ({self.hd95_unit}), not mm: the data gave no voxel spacing, or pixels "
                          "were asked for (units='px', e.g. for a placeholder spacing)"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # -- files ----------------------------------------------------------------

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write per-case results (and the summary, for convenience) as JSON.

        nan is stored as ``null``. Only ``cases`` is read back by
        :meth:`from_json`; the summary is recomputed.
        """
        summary = [{k: _nan_to_none(v) for k, v in row.items()} for row in self.summary()]
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "hd95_unit": self.hd95_unit,
            "metrics": list(self.metrics),
            "nsd_tolerance": self.nsd_tolerance,
            "cleanup": list(self.cleanup),
            "settings": self.settings,
            "cases": [r.to_row() for r in self._results],
            "summary": summary,
        }
        return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per (case, mode, class) with header ``case_id,mode,class,value,dice,hd95``
        (and ``,nsd`` when the report has NSD).

        A nan HD95/NSD is an empty cell, which spreadsheets and pandas read as missing.
        The units (``hd95_unit``, ``nsd_tolerance``) are in the JSON file only.
        """
        header = CSV_HEADER + (("nsd",) if self.has_nsd else ())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in self._results:
            row = r.to_row()
            writer.writerow(["" if row[k] is None else row[k] for k in header])
        return atomic_write_text(path, buf.getvalue())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> EvaluationReport:
        """Read a report written by :meth:`to_json` (also by older versions, without NSD).

        Raises:
            MedAdaptError: the file is missing, not JSON, or not an evaluation report.
        """
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise MedAdaptError(f"evaluation report not found: {p}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedAdaptError(f"cannot read evaluation report {p}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("cases"), list):
            raise MedAdaptError(f"{p} is not a medadapt evaluation report (written by to_json).")
        version, cleanup = doc.get("version", _VERSION), doc.get("cleanup") or []
        if isinstance(version, bool) or not isinstance(version, int) or not isinstance(cleanup, list):
            raise MedAdaptError(f"malformed evaluation report {p}: 'version' must be a whole number and 'cleanup' a "
                                f"list; got {version!r} and {cleanup!r}")
        if version > _VERSION:
            raise MedAdaptError(
                f"{p} has report format version {doc['version']}; this medadapt reads up to {_VERSION}."
            )
        try:
            results = [CaseResult.from_row(row) for row in doc["cases"]]
        except (TypeError, ValueError) as exc:  # MedAdaptError is a ValueError too
            raise MedAdaptError(f"malformed evaluation report {p}: {exc}") from exc
        metrics = doc.get("metrics", list(_METRICS))  # files written before `metrics` existed had both
        if not isinstance(metrics, list):
            raise MedAdaptError(f"malformed evaluation report {p}: 'metrics' must be a list, got {metrics!r}")
        try:
            settings = doc.get("settings") or {}
            if not isinstance(settings, dict):
                raise MedAdaptError(f"'settings' must be an object, got {settings!r}")
            return cls(results, hd95_unit=str(doc.get("hd95_unit", "mm")), metrics=metrics,
                       nsd_tolerance=doc.get("nsd_tolerance"), cleanup=doc.get("cleanup") or (), settings=settings)
        except MedAdaptError as exc:
            raise MedAdaptError(f"malformed evaluation report {p}: {exc}") from exc
