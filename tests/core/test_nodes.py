"""Node discovery: the documented order, the file formats, Slurm's hostlist syntax, clear errors.

PBS and Slurm allocations cannot exist here: their node files and variables are written by the
tests (that is the boundary a batch system would provide), everything else is the real code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import hostname
from core.errors import ConfigError
from core.nodes import (
    MAX_HOSTS,
    Discovery,
    NodeSpec,
    compress_hostlist,
    discover_nodes,
    expand_counts,
    expand_hostlist,
    parse_hostfile,
    parse_pbs_nodefile,
    short_name,
)

# ---------------------------------------------------------------- the order of sources


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_nodes_argument_wins_over_every_variable(tmp_path: Path) -> None:
    env = {
        "PBS_NODEFILE": write(tmp_path, "pbs", "p1\n"),
        "SLURM_JOB_NODELIST": "s[1-2]",
        "ENSEMBLE_MCP_HOSTFILE": write(tmp_path, "hosts", "f1\n"),
    }
    found = discover_nodes(["a", "b", "a"], env)
    assert found == Discovery((NodeSpec("a"), NodeSpec("b")), "Nodes")
    assert str(found) == "2 node(s) from Nodes"


def test_pbs_comes_before_slurm_and_the_hostfile(tmp_path: Path) -> None:
    path = write(tmp_path, "pbs", "p1\n")
    env = {"PBS_NODEFILE": path, "SLURM_JOB_NODELIST": "s1", "ENSEMBLE_MCP_HOSTFILE": path}
    found = discover_nodes(env=env)
    assert (found.nodes, found.source, found.detail) == ((NodeSpec("p1", 1),), "PBS_NODEFILE", path)
    assert str(found) == f"1 node(s) from PBS_NODEFILE={path}"


def test_slurm_comes_before_the_hostfile(tmp_path: Path) -> None:
    env = {"SLURM_JOB_NODELIST": "s[1-2]", "ENSEMBLE_MCP_HOSTFILE": write(tmp_path, "h", "f1\n")}
    found = discover_nodes(env=env)
    assert found.nodes == (NodeSpec("s1"), NodeSpec("s2"))
    assert found.source == "SLURM_JOB_NODELIST"


def test_the_older_slurm_nodelist_name_is_read_too() -> None:
    found = discover_nodes(env={"SLURM_NODELIST": "old[3-4]"})
    assert [n.name for n in found.nodes] == ["old3", "old4"]
    assert found.source == "SLURM_NODELIST"


def test_the_hostfile_is_used_without_a_batch_system(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts", "h1 slots=4\nh2:2\nh3\n")
    found = discover_nodes(env={"ENSEMBLE_MCP_HOSTFILE": path})
    assert found.nodes == (NodeSpec("h1", 4), NodeSpec("h2", 2), NodeSpec("h3", 1))
    assert found.source == "ENSEMBLE_MCP_HOSTFILE"


def test_nothing_set_means_this_host_alone() -> None:
    assert discover_nodes(env={}) == Discovery((NodeSpec(hostname()),), "local host")


def test_a_variable_set_to_the_empty_string_counts_as_unset(tmp_path: Path) -> None:
    env = {"PBS_NODEFILE": "", "SLURM_JOB_NODELIST": "", "ENSEMBLE_MCP_HOSTFILE": ""}
    assert discover_nodes(env=env).source == "local host"


def test_discovery_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PBS_NODEFILE", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENSEMBLE_MCP_HOSTFILE", write(tmp_path, "h", "only\n"))
    assert discover_nodes().nodes == (NodeSpec("only", 1),)


# ---------------------------------------------------------------- PBS node files


def test_pbs_names_are_shortened_and_repeats_become_slots() -> None:
    text = "x1.hsn.cm.cluster\nx1.hsn.cm.cluster\n\n# a comment\nx2.hsn\nx1\n  x3  # trailing\n"
    assert parse_pbs_nodefile(text) == (NodeSpec("x1", 3), NodeSpec("x2", 1), NodeSpec("x3", 1))


def test_ipv4_addresses_are_not_shortened() -> None:
    assert parse_pbs_nodefile("10.200.0.2\n10.200.0.3\n") == (
        NodeSpec("10.200.0.2", 1),
        NodeSpec("10.200.0.3", 1),
    )
    assert short_name("10.200.0.2") == "10.200.0.2"
    assert short_name("nid001.example.org") == "nid001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("h1\nh2 h3\n", r"PBS_NODEFILE=.* line 2: expected one host name, got 'h2 h3'"),
        ("h1\n-oProxyCommand=x\n", r"line 2: '-oProxyCommand=x' is not a valid host name"),
        ("h1\nh$(reboot)\n", r"line 2: 'h\$\(reboot\)' is not a valid host name"),
        ("\n# only comments\n\n", r"PBS_NODEFILE=.*: lists no hosts"),
    ],
)
def test_a_bad_pbs_nodefile_names_the_variable_the_line_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        discover_nodes(env={"PBS_NODEFILE": write(tmp_path, "pbs", text)})


def test_an_unreadable_node_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        ConfigError, match=rf"PBS_NODEFILE={missing}: cannot read the file: No such"
    ):
        discover_nodes(env={"PBS_NODEFILE": str(missing)})
    with pytest.raises(ConfigError, match="cannot read the file: Is a directory"):
        discover_nodes(env={"ENSEMBLE_MCP_HOSTFILE": str(tmp_path)})


def test_a_binary_node_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"h1\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not a text file \(byte 3 is not UTF-8\)"):
        discover_nodes(env={"PBS_NODEFILE": str(path)})


# ---------------------------------------------------------------- hostfiles


def test_hostfile_formats_mix_and_repeats_add_up() -> None:
    text = "a\na slots=3\nb:2\n# c\n\nc  slots=1 # comment\nb:1\n"
    assert parse_hostfile(text) == (NodeSpec("a", 4), NodeSpec("b", 3), NodeSpec("c", 1))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("h1:0", r"slot count '0' is not a whole number ≥ 1 in 'h1:0'"),
        ("h1:x", r"slot count 'x' is not a whole number"),
        ("h1 slots=", r"slot count '' is not a whole number"),
        ("h1 slots=-2", r"slot count '-2' is not a whole number"),
        ("h1 slots=٣", r"slot count '٣' is not a whole number"),
        ("h1 max_slots=4", r"'max_slots=4' is not supported \(the launcher never oversubscribes\)"),
        ("h1 cpus=4", r"'cpus=4' is not supported; write host, host:N or host slots=N"),
        ("h1 slots", r"'slots' is not supported"),
        ("h1:2 slots=2", r"use host:N or host slots=N, not both"),
        (":2", r"'' is not a valid host name"),
        ("h_1.x-y ok", r"'ok' is not supported"),
    ],
)
def test_a_bad_hostfile_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "hosts", line + "\n")
    with pytest.raises(ConfigError, match=rf"ENSEMBLE_MCP_HOSTFILE={path} line 1: {message}"):
        discover_nodes(env={"ENSEMBLE_MCP_HOSTFILE": path})


# ---------------------------------------------------------------- the Nodes argument


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ("h1,h2", r"Nodes: expected a list of host names, got the string 'h1,h2'"),
        ([], r"Nodes: lists no hosts"),
        (["h1", ""], r"Nodes\[1\]: '' is not a valid host name"),
        (["h1", 7], r"Nodes\[1\]: 7 is not a valid host name"),
        (["h 1"], r"Nodes\[0\]: 'h 1' is not a valid host name"),
        (["-F/etc/passwd"], r"Nodes\[0\]: '-F/etc/passwd' is not a valid host name"),
    ],
)
def test_bad_nodes_arguments_are_refused(nodes: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        discover_nodes(nodes, {})  # type: ignore[arg-type]


# ---------------------------------------------------------------- Slurm


def test_slurm_counts_come_from_cpus_per_node_first() -> None:
    env = {
        "SLURM_JOB_NODELIST": "nid[001-003],gpu7",
        "SLURM_JOB_CPUS_PER_NODE": "128(x3),64",
        "SLURM_TASKS_PER_NODE": "2(x4)",
    }
    assert discover_nodes(env=env).nodes == (
        NodeSpec("nid001", 128),
        NodeSpec("nid002", 128),
        NodeSpec("nid003", 128),
        NodeSpec("gpu7", 64),
    )


def test_slurm_tasks_per_node_is_the_fallback_count() -> None:
    env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    assert [n.slots for n in discover_nodes(env=env).nodes] == [2, 2, 1]


def test_slurm_counts_that_do_not_match_the_node_count_are_an_error() -> None:
    env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"}
    with pytest.raises(
        ConfigError,
        match=r"SLURM_JOB_CPUS_PER_NODE='4\(x2\)' gives 2 count\(s\) but "
        r"SLURM_JOB_NODELIST names 3 node\(s\)",
    ):
        discover_nodes(env=env)


def test_a_slurm_node_listed_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"SLURM_JOB_NODELIST: 'n\[1-2\],n2' lists n2 more"):
        discover_nodes(env={"SLURM_JOB_NODELIST": "n[1-2],n2"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", [4]),
        ("2(x3),1", [2, 2, 2, 1]),
        ("36(x2), 18", [36, 36, 18]),
        ("1(x1)", [1]),
    ],
)
def test_slurm_count_form(text: str, expected: list[int]) -> None:
    assert expand_counts(text) == expected


@pytest.mark.parametrize("text", ["", "0", "2(x0)", "2(3)", "x2", "2(x3", "-1", "2,,3", "1.5"])
def test_malformed_slurm_counts_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"SLURM_TASKS_PER_NODE: .* is not N or N\(xM\)"):
        expand_counts(text, "SLURM_TASKS_PER_NODE")


def test_a_huge_slurm_count_is_refused_before_it_fills_memory() -> None:
    with pytest.raises(ConfigError, match="counts more than 1000000 nodes"):
        expand_counts("1(x1000000),1")


# Edge cases of Slurm's hostlist syntax. Multiple bracket groups expand as a product (Slurm's
# _push_range_list recurses over the prefix's brackets, leftmost slowest); text after the last
# bracket is accepted by recent Slurm versions; separators are ',' and blanks outside brackets.
HOSTLISTS = [
    ("nid001", ["nid001"]),
    ("nid[001-004,007]", ["nid001", "nid002", "nid003", "nid004", "nid007"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),
    ("n[5]", ["n5"]),
    ("n[3,1,2]", ["n3", "n1", "n2"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("rack[0-1]-n[01-02]", ["rack0-n01", "rack0-n02", "rack1-n01", "rack1-n02"]),
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
    ("x1000c0s0b0n[0-1],x1000c0s1b0n0", ["x1000c0s0b0n0", "x1000c0s0b0n1", "x1000c0s1b0n0"]),
    ("h1 h2\th3", ["h1", "h2", "h3"]),
    ("h1, h2", ["h1", "h2"]),
    ("  h1  ", ["h1"]),
    ("[1-2]", ["1", "2"]),
    ("node.example.org", ["node.example.org"]),
]


@pytest.mark.parametrize(("text", "expected"), HOSTLISTS)
def test_hostlist_edge_cases(text: str, expected: list[str]) -> None:
    assert expand_hostlist(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"'' names no hosts"),
        ("n[1-", r"unclosed '\['"),
        ("n]1", r"'\]' without '\['"),
        ("n[[1]]", r"nested '\['"),
        ("n[]", r"empty brackets in 'n\[\]'"),
        ("n[3-1]", r"range '3-1' in 'n\[3-1\]' runs backwards"),
        ("n[a-b]", r"'a-b' in 'n\[a-b\]' is not a number or a lo-hi range"),
        ("n[1-]", r"'1-' in 'n\[1-\]' is not a number"),
        ("n[-1]", r"'-1' in 'n\[-1\]' is not a number"),
        ("n[1,,2]", r"'' in 'n\[1,,2\]' is not a number"),
        ("n[1-2-3]", r"'1-2-3' .* is not a number"),
        ("n[123x456]", r"'123x456' .* is not a number"),
        ("a,,b", r"empty item between commas in 'a,,b'"),
        ("a,", r"empty item between commas"),
        (",a", r"empty item between commas"),
        ("-n[1-2]", r"'-n1' \(from '-n\[1-2\]'\) is not a valid host name"),
        ("n[1-2]$x", r"'n1\$x' \(from 'n\[1-2\]\$x'\) is not a valid host name"),
        ("n[0-1000000]", r"expands to more than 1000000 hosts"),
        ("a[0-999]b[0-9999]", r"expands to more than 1000000 hosts"),
    ],
)
def test_malformed_hostlists_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"SLURM_JOB_NODELIST: .*{message}|{message}"):
        expand_hostlist(text, "SLURM_JOB_NODELIST")


def test_a_malformed_slurm_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^SLURM_JOB_NODELIST: unclosed '\['"):
        discover_nodes(env={"SLURM_JOB_NODELIST": "nid[001-004"})


def test_a_whole_aurora_sized_list_expands() -> None:
    names = expand_hostlist("x[00000-10623]")
    assert len(names) == 10_624 < MAX_HOSTS
    assert (names[0], names[-1]) == ("x00000", "x10623")


# ---------------------------------------------------------------- compressing, and the round trip


@pytest.mark.parametrize(
    ("names", "text"),
    [
        (["nid001", "nid002", "nid003", "nid007"], "nid[001-003,007]"),
        (["n9", "n10", "n11"], "n[9-11]"),
        (["n09", "n10"], "n[09-10]"),
        (["n9", "n010"], "n[9,010]"),
        (["a", "b1", "b2", "c"], "a,b[1-2],c"),
        (["x1000c0s0b0n0", "x1000c0s1b0n0"], "x1000c0s0b0n0,x1000c0s1b0n0"),
        (["n3", "n1", "n2"], "n[3,1-2]"),
        (["h1-ib", "h2-ib"], "h1-ib,h2-ib"),
        ([], ""),
    ],
)
def test_compress_keeps_order_and_padding(names: list[str], text: str) -> None:
    assert compress_hostlist(names) == text


prefixes = st.from_regex(r"[a-z_][a-z_.-]{0,3}", fullmatch=True)
numbers = st.tuples(st.integers(0, 2000), st.integers(0, 4)).map(lambda t: f"{t[0]:0{t[1]}d}")
plain = st.from_regex(r"[a-z][a-z0-9.-]{0,6}[a-z]", fullmatch=True)
host = st.one_of(st.tuples(prefixes, numbers).map("".join), plain)


@given(st.lists(host, min_size=1, max_size=60, unique=True))
def test_expand_undoes_compress_for_any_host_list(names: list[str]) -> None:
    assert expand_hostlist(compress_hostlist(names)) == names


@given(
    st.lists(
        st.tuples(
            prefixes, st.sets(st.integers(0, 300), min_size=1, max_size=40), st.integers(1, 4)
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda group: group[0],
    )
)
def test_compress_of_sorted_numbered_hosts_is_short_and_round_trips(
    groups: list[tuple[str, set[int], int]],
) -> None:
    names = [f"{prefix}{n:0{width}d}" for prefix, ns, width in groups for n in sorted(ns)]
    text = compress_hostlist(names)
    assert expand_hostlist(text) == names
    assert text.count("[") <= len(groups)  # one bracket per prefix when numbers are sorted


@given(st.lists(st.tuples(st.integers(1, 512), st.integers(1, 8)), min_size=1, max_size=10))
def test_count_form_round_trips(pairs: list[tuple[int, int]]) -> None:
    text = ",".join(f"{value}(x{repeat})" if repeat > 1 else str(value) for value, repeat in pairs)
    assert expand_counts(text) == [value for value, repeat in pairs for _ in range(repeat)]
