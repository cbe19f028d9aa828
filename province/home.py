"""Where a province command finds the province's registry: the one way every ``loa-province``
command opens it.

The registry is ``HOME/registry.db`` (SQLite) unless ``LOA_PROVINCE_STORE`` names a PostgreSQL
database (docs/protocol.md, "Province store"). Enrolling, publishing, the time beacon, the
collector and the reports all open it here, so they all use the same store: a province on
PostgreSQL must never enroll its stations into a SQLite file its collector does not read. The
home directory keeps the province's files (CA, operator identities, signing log) whichever store
holds the registry. The registry itself is ``province.registry``'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from province.errors import ProvinceError
from province.registry import POSTGRES_SCHEMES, Registry, open_registry

HOME_ENV = "LOA_PROVINCE_HOME"
STORE_ENV = "LOA_PROVINCE_STORE"  # a postgresql:// URL: the registry there, not HOME/registry.db
REGISTRY_FILE = "registry.db"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "province-home")


def store_url() -> str | None:
    """The PostgreSQL URL of ``LOA_PROVINCE_STORE``, or None for the SQLite file in the home."""
    url = os.environ.get(STORE_ENV)
    if not url:
        return None
    if not url.startswith(POSTGRES_SCHEMES):
        # A path here would be a second SQLite registry beside HOME's, chosen by a typo. The
        # value is not echoed: a mistyped URL may carry a password.
        raise ProvinceError(
            f"${STORE_ENV} must be a postgresql:// URL (unset it for {REGISTRY_FILE} in the "
            "province home)"
        )
    return url


def open_home_registry(home: Path, *, must_exist: bool = True) -> Registry:
    """The registry of the province at ``home``: the PostgreSQL database ``LOA_PROVINCE_STORE``
    names, else ``HOME/registry.db``.

    ``must_exist`` refuses a missing SQLite file instead of creating an empty one: only
    ``ca init`` brings a province into being, and any other command would otherwise start a
    province of its own in a mistyped --home and report nothing, which looks like success.
    A PostgreSQL database must exist either way (the server refuses to connect otherwise);
    its schema is created on first open.
    """
    url = store_url()
    if url is not None:
        return _open_postgres(url)
    path = home / REGISTRY_FILE
    if must_exist and not path.exists():
        raise ProvinceError(
            f"no registry at {path}: is --home (or ${HOME_ENV}) right? "
            "A province starts with `loa-province ca init`"
        )
    return Registry(path)


def registry_province(registry: Registry) -> str:
    """The province the registry belongs to, as ``ca init`` recorded it."""
    province = registry.meta("province")
    if province is None:
        raise ProvinceError(
            f"the province store {registry.path} names no province: run `loa-province ca init`"
        )
    return province


def _open_postgres(url: str) -> Registry:
    try:
        # Imported here: psycopg is an optional extra, and SQLite provinces run without it.
        import psycopg

        from province.registry_pg import redacted
    except ImportError as exc:
        raise ProvinceError(
            f"${STORE_ENV} names a PostgreSQL database, but its driver cannot be loaded ({exc}): "
            "pip install '.[postgres]' and Debian's libpq5"
        ) from exc
    try:
        where = redacted(url)
    except psycopg.Error as exc:
        raise ProvinceError(f"${STORE_ENV} is not a PostgreSQL URL psycopg can read") from exc
    try:
        return open_registry(url)
    except psycopg.OperationalError as exc:
        # The server's words (unreachable, no such database, authentication); libpq does not
        # repeat the password in them.
        raise ProvinceError(f"cannot open the province store ({where}): {exc}") from exc
