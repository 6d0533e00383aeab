"""Hard-link installed distributions of this interpreter's environment into another virtual environment.

    python .ci/link_packages.py DEST_VENV PATTERN [PATTERN ...]

``make test`` builds two environments that differ only in torchreid; torch with its CUDA libraries is about
5.5 GB of each. Linking the files of the distributions whose names match PATTERN (fnmatch, e.g. ``nvidia-*``)
into DEST_VENV's site-packages, their ``dist-info`` included, lets pip there find them installed, at no disk
cost. Files outside site-packages (console scripts, which name this interpreter) are left out; a file on
another file system is copied. Both environments must use the same Python version.
"""
import fnmatch
import importlib.metadata
import os
import shutil
import sys
import sysconfig


def site_packages(venv):
    """The purelib folder of the virtual environment at ``venv`` (same Python version as this one)."""
    return sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})


def matches(name, pattern):
    """Whether distribution ``name`` matches ``pattern`` (fnmatch, case-insensitive)."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def link_distributions(dest_venv, patterns):
    """Link (or copy) every file of the matching distributions; returns {distribution name: files linked}."""
    here = os.path.realpath(sysconfig.get_path("purelib"))
    dest = site_packages(dest_venv)
    linked = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not any(matches(name, p) for p in patterns) or name in linked:
            continue
        count = 0
        for file in dist.files or ():
            source = os.path.realpath(dist.locate_file(file))
            relative = os.path.relpath(source, here)
            if relative.startswith(os.pardir) or not os.path.isfile(source):
                continue
            target = os.path.join(dest, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.remove(target)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            count += 1
        linked[name] = count
    return linked


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: python .ci/link_packages.py DEST_VENV PATTERN [PATTERN ...]")
    dest_venv, patterns = argv[0], argv[1:]
    if not os.path.isdir(site_packages(dest_venv)):
        sys.exit(f"error: {site_packages(dest_venv)} does not exist; create the environment first "
                 f"(python -m venv {dest_venv}) with Python {sys.version_info.major}.{sys.version_info.minor}")
    linked = link_distributions(dest_venv, patterns)
    missing = [p for p in patterns if not any(matches(n, p) for n in linked)]
    if missing:
        sys.exit(f"error: no installed distribution matches {', '.join(missing)} in {sys.prefix}; install it "
                 f"there first")
    print(f"linked {sum(linked.values())} files of {len(linked)} distributions into {site_packages(dest_venv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
