"""City selections: which cities a dataset may use (`--pool`) or must include (`--require`).

A selector is a string, several joined with '&' meaning AND:
  all | world | <synthetic region name, e.g. Atlantis> | region:<name> | country:<A,B,...>
  | name:<regex> | bounds:<xmin>,<xmax>,<ymin>,<ymax> (scaled units, inclusive) | ids:<a,b,...>
"""

from __future__ import annotations

import re

import numpy as np

from .errors import WorldrepError
from .world import World

FORMS = ("all", "world", "<synthetic region>", "region:NAME", "country:CC[,CC]",
         "name:REGEX", "bounds:XMIN,XMAX,YMIN,YMAX", "ids:ID[,ID]")


def _one(world: World, term: str) -> np.ndarray:
    cities = world.cities
    kind, _, arg = term.partition(":")
    if term == "all":
        return np.ones(len(world), bool)
    if not arg:
        if term in world.group_names:
            return world.groups == term
        raise WorldrepError(f"unknown city group '{term}'; allowed: {', '.join(FORMS)} "
                            f"(groups in this world: {', '.join(world.group_names)})")
    if kind == "region":
        known = sorted(cities["region"].unique())
        if arg not in known:
            raise WorldrepError(f"unknown region '{arg}'; allowed: {', '.join(known)}")
        return (cities["region"] == arg).to_numpy()
    if kind == "country":
        return cities["country"].isin(arg.split(",")).to_numpy()
    if kind == "name":
        try:
            re.compile(arg)
        except re.error as err:
            raise WorldrepError(f"bad name pattern '{arg}': {err}") from None
        return cities["name"].str.contains(arg, regex=True, na=False).to_numpy()
    if kind == "bounds":
        try:
            x0, x1, y0, y1 = (float(v) for v in arg.split(","))
        except ValueError:
            raise WorldrepError(f"bad bounds '{arg}'; expected bounds:XMIN,XMAX,YMIN,YMAX") from None
        return (world.x >= x0) & (world.x <= x1) & (world.y >= y0) & (world.y <= y1)
    if kind == "ids":
        try:
            ids = [int(v) for v in arg.split(",")]
        except ValueError:
            raise WorldrepError(f"bad selector 'ids:{arg}'; expected ids:ID[,ID] with integer "
                                "city ids, e.g. ids:1001,1002") from None
        return np.isin(world.ids, ids)
    raise WorldrepError(f"unknown selector '{term}'; allowed: {', '.join(FORMS)}")


def select(world: World, selector: str) -> np.ndarray:
    """Row indices (sorted) of the cities matching a selector."""
    mask = np.ones(len(world), bool)
    for term in selector.split("&"):
        mask &= _one(world, term.strip())
    return np.flatnonzero(mask)
