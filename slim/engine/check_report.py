"""The report of `--check` (slim/engine/check.py): sections of lines, tables and findings; written as check.md and
check.json into the run folder, and printed short.

    report = CheckReport("student <- teacher")
    report.table("teacher", ["model", "top1"], [["teacher", "0.95"]])
    report.flag("balance", "distill_KLLoss pulls 120x harder than the task loss", "set -o distill_loss.coef.0=0.025")
    report.write("output/run")     # check.md, check.json; report.exit_code: 0 (nothing flagged) or 3

A finding is flagged (something to fix before training) or a note. The exit code of a check is 3 when anything is
flagged, so that a script can stop before the long run; 0 otherwise.
"""
import json
import os
from collections import OrderedDict

EXIT_OK, EXIT_FLAGGED = 0, 3
SECTIONS = OrderedDict([("teacher", "The teacher on the student's data"), ("balance", "Loss balance"),
                        ("pairs", "Pairs"), ("cost", "Cost")])


class CheckFinished(Exception):
    """Raised when a check ends the command (after --check, or a flagged --check_then_train): `exit_code` is
    what the command returns (0: nothing flagged, 3: something flagged; see the report)."""

    def __init__(self, report):
        super().__init__(report.summary_line())
        self.report = report
        self.exit_code = report.exit_code


class CheckReport:
    def __init__(self, title: str):
        self.title = title
        self.parts = OrderedDict((key, []) for key in SECTIONS)  # section -> [("text"|"table"|"finding", ...)]
        self.findings = []  # {"section", "flagged", "message", "fix"}
        self.data = OrderedDict()  # section -> machine-readable values (check.json)

    # ----- building -----------------------------------------------------------------------------------
    def note(self, section: str, text: str):
        self.parts[section].append(("text", text))

    def table(self, section: str, header, rows):
        self.parts[section].append(("table", list(header), [list(map(str, r)) for r in rows]))

    def flag(self, section: str, message: str, fix: str = ""):
        self._finding(section, True, message, fix)

    def info(self, section: str, message: str):
        self._finding(section, False, message, "")

    def _finding(self, section, flagged, message, fix):
        finding = {"section": section, "flagged": bool(flagged), "message": message, "fix": fix}
        self.findings.append(finding)
        self.parts[section].append(("finding", finding))

    def record(self, section: str, values):
        self.data[section] = values

    # ----- results ------------------------------------------------------------------------------------
    @property
    def flagged(self):
        return [f for f in self.findings if f["flagged"]]

    @property
    def exit_code(self):
        return EXIT_FLAGGED if self.flagged else EXIT_OK

    def summary_line(self):
        n = len(self.flagged)
        return (f"check: {n} finding(s) flagged (exit {self.exit_code}); see check.md" if n else
                f"check: nothing flagged (exit {self.exit_code})")

    def markdown(self) -> str:
        lines = [f"# Check: {self.title}", "", self.summary_line(), ""]
        for key, heading in SECTIONS.items():
            if not self.parts[key]:
                continue
            lines += [f"## {heading}", ""]
            for kind, *rest in self.parts[key]:
                if kind == "text":
                    lines += [rest[0], ""]
                elif kind == "table":
                    header, rows = rest
                    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                    lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
                else:
                    f = rest[0]
                    mark = "**FLAGGED**" if f["flagged"] else "note"
                    lines.append(f"- {mark}: {f['message']}" + (f" Fix: {f['fix']}" if f["fix"] else ""))
                    lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def console_lines(self):
        """The short printed form: each table, then each finding (flagged first)."""
        out = [f"check: {self.title}"]
        for key, heading in SECTIONS.items():
            for kind, *rest in self.parts[key]:
                if kind == "table":
                    header, rows = rest
                    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
                    out.append(f"[{key}] " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
                    out += [f"[{key}] " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
                elif kind == "text" and key == "cost":  # the projection and the cache size
                    out.append(f"[{key}] {rest[0]}")
        for f in sorted(self.findings, key=lambda f: not f["flagged"]):
            mark = "FLAGGED" if f["flagged"] else "note"
            out.append(f"[{f['section']}] {mark}: {f['message']}" + (f" Fix: {f['fix']}" if f["fix"] else ""))
        out.append(self.summary_line())
        return out

    def to_json(self):
        return {"title": self.title, "exit_code": self.exit_code, "flagged": len(self.flagged),
                "findings": self.findings, **self.data}

    def write(self, folder: str):
        """check.md and check.json in `folder`; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        md, js = os.path.join(folder, "check.md"), os.path.join(folder, "check.json")
        with open(md, "w") as f:
            f.write(self.markdown())
        with open(js, "w") as f:
            json.dump(self.to_json(), f, indent=1, default=float)
        return md, js
