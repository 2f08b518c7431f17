"""The one packaging rule pyproject.toml cannot state: the schema ships inside the package.

The SQL has one home, ``supabase/`` (``migrations/``, where the Supabase CLI looks, and
``bootstrap/local.sql``). ``package_dir`` maps that directory onto the package ``coursegen.sql``,
so every wheel (built from the tree, as ``pip install .`` does, or from the sdist, which carries
``supabase/``) holds it as ``coursegen/sql/...`` and no second copy sits in git;
``coursegen.migrate`` reads it with ``importlib.resources``. An editable install maps only
modules, not data, so there ``coursegen.migrate`` falls back to the checkout's ``supabase/``.
pyproject.toml's ``packages.find`` can only find packages under their parent's directory, hence
this file; everything else stays in pyproject.toml. ``tests/integration/test_wheel.py`` proves it.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["coursegen*", "middleware*"]), "coursegen.sql"],
    package_dir={"coursegen.sql": "supabase"},
    package_data={
        "coursegen": ["samples/*.md"],  # the demo's source material, read by coursegen.demo
        "coursegen.sql": ["migrations/*.sql", "bootstrap/*.sql"],
    },
)
