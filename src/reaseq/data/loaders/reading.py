"""Reading helpers shared by every loader: text tables, numbers, lists, and errors that name file, field and fix."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO

import polars as pl

from reaseq.errors import InputError

UTF8_FIX = "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"
BYTE_ORDER_MARK = "\ufeff"


def require_file(path: Path, role: str, fix: str) -> Path:
    """Return path if it is a file, else raise an InputError naming it."""
    if not path.is_file():
        raise InputError(path, None, f"the {role} file was not found", fix)
    return path


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing .gz files."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def first_invalid_utf8(path: Path, separator: str | None, has_header: bool) -> tuple[int, str | None]:
    """Line number (1-based, 0 if none) of the first non-UTF-8 line, and the column it falls in when known."""
    header: list[str] | None = None
    with open_binary(path) as handle:  # streamed: this runs on error paths, possibly on very large files
        for line_no, line in enumerate(handle, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not (separator and header):
                    return line_no, None
                index = line[: exc.start].count(separator.encode())
                return line_no, header[index] if index < len(header) else None
            if line_no == 1 and has_header and separator:
                header = text.rstrip("\r\n").lstrip(BYTE_ORDER_MARK).split(separator)
    return 0, None


def polars_error(exc: Exception, file: Path | str, fix: str, field: str | None = None) -> InputError:
    """Turn a polars parse error into an InputError for the given file."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(file, field, f"cannot be parsed ({message})", fix)


def read_table(
    path: Path,
    *,
    separator: str,
    has_header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quote_char: str | None = None,
    n_rows: int | None = None,
) -> pl.DataFrame:
    """Read a delimited text file with every column as text; raise InputError on unreadable input."""
    require_file(path, "data", "check dataset.path and the file names in the config")
    source: Path | bytes = path
    if encoding.lower().replace("-", "") != "utf8":
        # polars only decodes UTF-8, so other encodings are transcoded in memory first.
        source = path.read_bytes().decode(encoding).encode("utf-8")
    try:
        df = pl.read_csv(
            source,
            separator=separator,
            has_header=has_header,
            new_columns=names,
            quote_char=quote_char,
            infer_schema=False,
            n_rows=n_rows,
            raise_if_empty=True,
        )
    except pl.exceptions.NoDataError:
        raise InputError(path, None, "the file is empty", "point the config at a non-empty file") from None
    except pl.exceptions.PolarsError as exc:
        raise describe_read_error(exc, path, separator, has_header, names) from None
    if df.columns and df.columns[0].startswith(BYTE_ORDER_MARK):
        # Spreadsheet exports often start with a byte-order mark that would stick to the first column name.
        df = df.rename({df.columns[0]: df.columns[0].lstrip(BYTE_ORDER_MARK)})
    return df


def describe_read_error(exc: Exception, path: Path, separator: str | None, has_header: bool, names: list[str] | None = None) -> InputError:
    """Explain why polars could not read a text file: bad encoding, ragged rows, or other syntax."""
    text = str(exc).lower()
    if "utf-8" in text or "utf8" in text:
        line, column = first_invalid_utf8(path, separator, has_header)
        where = f" (first at line {line})" if line else ""
        return InputError(path, column, f"the file is not valid UTF-8 text{where}", UTF8_FIX)
    if "more fields" in text or "ragged" in text:
        shown = repr(separator) if separator else "the expected separator"
        problem = f"a row has more fields than the header (separator {shown})"
        return InputError(path, None, problem, "check the separator and that no value contains it unquoted")
    if names and "does not match number of columns" in text:
        problem = f"expected {len(names)} columns {names} separated by {separator!r}"
        return InputError(path, None, problem, "check that the file matches the format of the configured loader")
    return polars_error(exc, path, "check that the file matches the format of the configured loader")


def parse_numbers(
    df: pl.DataFrame,
    column: str,
    dtype: pl.DataType,
    file: Path | str,
    *,
    first_line: int | None = 2,
    field: str | None = None,
    strict: bool = True,
) -> pl.DataFrame:
    """Convert a text column to a numeric dtype, naming the first bad value and its line on failure.

    With strict=False, values that are not numbers become null instead (for optional text attributes).
    """
    raw = df[column]
    values = raw.str.strip_chars() if raw.dtype == pl.Utf8 else raw
    as_float = values.cast(pl.Float64, strict=False)
    present = (values != "") if raw.dtype == pl.Utf8 else raw.is_not_null()  # blank cells are missing, not bad
    bad = as_float.is_null() & present.fill_null(False)
    if strict and bad.any():
        row = int(bad.arg_true()[0])
        where = f"line {row + first_line}" if first_line is not None else f"row {row + 1}"
        name = field or column
        raise InputError(
            file,
            name,
            f"value {raw[row]!r} at {where} is not a number",
            f"make every '{name}' value a number (no text, units or thousands separators)",
        )
    if dtype.is_integer():
        # Integer text is parsed directly so large ids and timestamps keep full precision; "12.0" goes via float.
        result = values.cast(dtype, strict=False).fill_null(as_float.floor().cast(dtype, strict=False))
    else:
        result = as_float.cast(dtype)
    return df.with_columns(result.alias(column))


def split_list(column: str, separator: str) -> pl.Expr:
    """Split a text column into a list of non-empty tokens (null becomes an empty list)."""
    return (
        pl.col(column)
        .cast(pl.Utf8)
        .fill_null("")
        .str.split(separator)
        .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
        .alias(column)
    )


def null_ratings() -> pl.Expr:
    """A null rating column, for implicit-feedback data."""
    return pl.lit(None, dtype=pl.Float32).alias("rating")


def items_from_interactions(interactions: pl.DataFrame) -> pl.DataFrame:
    """An items table with the item id as title, for sources without item metadata."""
    return interactions.select(pl.col("item_id").unique(maintain_order=True)).with_columns(pl.col("item_id").alias("title"))


def missing_column(file: Path | str, column: str, present: list[str], fix: str) -> InputError:
    """An InputError for a source column the loader needs but the file lacks."""
    return InputError(file, column, f"no column '{column}'; columns present: {present}", fix)
