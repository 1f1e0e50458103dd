"""Old import path of the JSONL/text readers, kept only for ``lit_nomic/cli.py`` (owned elsewhere).

Delete this file once ``lit_nomic/cli.py`` reads
``from lit_nomic.data.formats import field_str, iter_jsonl, iter_lines`` (issue 14).
"""

from lit_nomic.data.formats import field_str, iter_jsonl, iter_lines

__all__ = ["field_str", "iter_jsonl", "iter_lines"]
