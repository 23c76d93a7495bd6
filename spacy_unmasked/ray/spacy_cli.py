"""The pieces of spaCy's CLI that the Ray commands share with ``spacy apply``.

spaCy exports its typer ``app`` publicly (``spacy.cli.app``) but not the two
helpers ``spacy apply`` is built on: ``walk_directory`` (which files of a folder
are read, in which order) and ``import_code`` (``--code``). ``spacy ray-apply``
must read inputs exactly as ``spacy apply`` does, so both are taken from
``spacy.cli._util`` here, in this one place, and nowhere else.
"""

from spacy.cli import app
from spacy.cli._util import import_code, walk_directory

__all__ = ["app", "import_code", "walk_directory"]
