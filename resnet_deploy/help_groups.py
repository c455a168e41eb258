"""``--help`` in sections: options grouped by what they are about, then worked examples.

A long flat option list (``build`` has thirty) hides the few flags a person needs. Options are placed
by a mapping from their parameter name to a section; one the mapping does not know (a flag added
later, a plug-in target's flag) lands in a last "Other options" section, so nothing disappears from help.
"""

from __future__ import annotations

from typing import Any, Sequence

import click

OTHER = "Other options"


class GroupedCommand(click.Command):
    """A ``click.Command`` whose help lists options in ``groups`` (section title, parameter names), in that
    order, then ``examples`` verbatim (shell lines, never rewrapped)."""

    def __init__(self, *args: Any, groups: Sequence[tuple[str, Sequence[str]]] = (),
                 examples: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = tuple((title, tuple(names)) for title, names in groups)
        self.examples = tuple(examples)

    def sections(self, ctx: click.Context) -> list[tuple[str, list[tuple[str, str]]]]:
        """(title, help records) per non-empty section, in display order; unmapped options last."""
        where = {name: title for title, names in self.groups for name in names}
        rows: dict[str, list[tuple[str, str]]] = {title: [] for title, _ in self.groups}
        rows[OTHER if self.groups else "Options"] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):  # arguments are in the usage line
                continue
            # click names its help option differently across releases: "help" stands for it in ``groups``
            name = "help" if set(getattr(param, "opts", ())) & set(ctx.help_option_names) else param.name or ""
            rows[where.get(name, OTHER if self.groups else "Options")].append(record)
        return [(title, records) for title, records in rows.items() if records]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, records in self.sections(ctx):
            with formatter.section(title):
                formatter.write_dl(records)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")
