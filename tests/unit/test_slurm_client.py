"""SlurmClient against recorded Slurm 22.05.8 output (tests/unit/data), through a swapped runner."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from shoal.errors import CommandError, SlurmError
from shoal.runner import Completed, Runner, use_runner
from shoal.slurm import AccountingUnavailable, Backoff, JobState, SlurmClient, poll
from shoal.slurm.client import parse_scontrol_record
from shoal.slurm.hostlist import compress, expand

DATA = Path(__file__).parent / "data"


class Recorded(Runner):
    """Answers each command from a table keyed by the first argv words after the prefix."""

    def __init__(self, answers: Mapping[str, Completed | list[Completed]], prefix_len: int = 0):
        super().__init__()
        self.answers = {k: (v if isinstance(v, list) else [v]) for k, v in answers.items()}
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self.prefix_len = prefix_len

    def run(self, argv: Sequence[str], **kw: object) -> Completed:
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        self.envs.append(kw.get("env"))  # type: ignore[arg-type]
        cmd = args[self.prefix_len:]
        for key in sorted(self.answers, key=len, reverse=True):
            if " ".join(cmd).startswith(key):
                queue = self.answers[key]
                done = queue.pop(0) if len(queue) > 1 else queue[0]
                if kw.get("check", True) and done.returncode != 0:
                    raise CommandError(args, done.returncode, done.stdout, done.stderr)
                return done
        raise AssertionError(f"unexpected command {args}")


def ok(stdout: str, argv: list[str] | None = None) -> Completed:
    return Completed(argv or [], 0, stdout, "", 0.01)


def data(name: str) -> str:
    return (DATA / name).read_text()


def test_hostlist_expand_and_compress() -> None:
    assert expand("n[1-3,7],login") == ["n1", "n2", "n3", "n7", "login"]
    assert expand("n[01-03]") == ["n01", "n02", "n03"]
    assert expand("") == []
    assert compress(["n1", "n2", "n3", "n7"]) == "n[1-3,7]"
    assert compress(["n01", "n02", "n04"]) == "n[01-02,04]"
    assert compress(["node2", "node5"]) == "node[2,5]"  # was node[1-2] in a second implementation
    assert expand(compress(["a5", "a6", "b", "a9"])) == ["a5", "a6", "b", "a9"]
    with pytest.raises(SlurmError):
        expand("n[1-x]")


def _scontrol_samples() -> list[tuple[str, str, str]]:
    rows = []
    for line in data("scontrol_hostlist_22.05.tsv").splitlines():
        if line and not line.startswith("#"):
            verb, arg, out = line.split("\t")
            rows.append((verb, arg, out))
    return rows


@pytest.mark.parametrize(("verb", "arg", "out"), _scontrol_samples())
def test_hostlist_matches_scontrol(verb: str, arg: str, out: str) -> None:
    """Captured `scontrol show hostnames|hostlist|hostlistsorted ARG` output (Slurm 22.05.8)."""
    if verb == "hostnames":
        assert expand(arg) == out.split(" ")
    else:
        assert compress(expand(arg), sort=verb == "hostlistsorted") == out


def test_submit_returns_job_id_and_uses_prefix_and_env() -> None:
    rec = Recorded({"sbatch": ok("4242;shoal\n")}, prefix_len=3)
    client = SlurmClient(prefix=["nsenter", "--net=/run/netns/ctl", "--"], env={"SLURM_CONF": "/x"})
    with use_runner(rec):
        assert client.submit("/tmp/a.sh") == 4242
    assert rec.calls[0] == ["nsenter", "--net=/run/netns/ctl", "--", "sbatch", "--parsable",
                            "/tmp/a.sh"]
    assert rec.envs[0] == {"SLURM_CONF": "/x"}


def test_submit_without_job_id_is_an_error() -> None:
    with use_runner(Recorded({"sbatch": ok("sbatch: warning: nothing\n")})), \
            pytest.raises(SlurmError, match="no job id"):
        SlurmClient().submit("/tmp/a.sh")


def test_squeue_json_is_parsed() -> None:
    with use_runner(Recorded({"squeue --json": ok(data("squeue_22.05.json"))})):
        jobs = {j.job_id: j for j in SlurmClient().queue()}
    assert set(jobs) == {99, 100, 101, 102}
    run = jobs[101]
    assert run.state is JobState.RUNNING and not run.state.terminal
    assert run.nodes == ("n1", "n2")
    assert run.start_time == 1717000002
    assert run.stdout == "/work/results/quick/logs/3f2a9c1b7d04-r0.out"
    pend = jobs[102]
    assert pend.state is JobState.PENDING and pend.reason == "Resources"
    assert pend.start_time is None and pend.nodes == ()
    failed = jobs[100]
    assert failed.state is JobState.FAILED and failed.state.terminal and not failed.state.ok
    assert failed.exit_code == 1  # wait status 256
    assert jobs[99].state.ok and jobs[99].seconds == 20.0


def test_sacct_json_is_parsed_and_filtered() -> None:
    rec = Recorded({"sacct --json": ok(data("sacct_22.05.json"))})
    with use_runner(rec):
        jobs = {j.job_id: j for j in SlurmClient().accounting([97, 98, 103, 5])}
    assert rec.calls[0] == ["sacct", "--json", "--jobs=5,97,98,103"]
    done = jobs[97]
    assert done.state is JobState.COMPLETED and done.exit_code == 0
    assert done.nodes == ("n01", "n02", "n03", "n04")
    assert (done.start_time, done.end_time, done.seconds) == (1716999905, 1716999930, 25.0)
    cancelled = jobs[98]
    assert cancelled.state is JobState.CANCELLED and cancelled.signal == 9
    pending = jobs[103]
    assert pending.state is JobState.PENDING and pending.nodes == () and pending.end_time is None
    assert pending.reason == "Priority"


def test_job_states_asks_sacct_only_for_jobs_gone_from_squeue() -> None:
    rec = Recorded({"squeue --json": ok(data("squeue_22.05.json")),
                    "sacct --json": ok(data("sacct_22.05.json"))})
    with use_runner(rec):
        states = SlurmClient().job_states([101, 97])
    assert [c[0] for c in rec.calls] == ["squeue", "sacct"]
    assert rec.calls[1][-1] == "--jobs=97"
    assert states[101].state is JobState.RUNNING and states[97].state is JobState.COMPLETED

    rec2 = Recorded({"squeue --json": ok(data("squeue_22.05.json"))})
    with use_runner(rec2):
        SlurmClient().job_states([101, 99])
    assert [c[0] for c in rec2.calls] == ["squeue"]


def test_accounting_disabled_is_remembered() -> None:
    disabled = Completed([], 1, "", "sacct: error: Slurm accounting storage is disabled\n", 0.0)
    rec = Recorded({"squeue --json": ok(data("squeue_22.05.json")), "sacct --json": disabled})
    client = SlurmClient()
    with use_runner(rec):
        with pytest.raises(AccountingUnavailable):
            client.accounting([1])
        assert client.job_states([7]) == {}
        assert client.job_states([7]) == {}
    assert [c[0] for c in rec.calls] == ["sacct", "squeue", "sacct", "squeue"]


def test_slurm_errors_in_json_become_slurm_error() -> None:
    bad = '{"meta": {}, "errors": [{"error": "Invalid user"}], "jobs": []}'
    with use_runner(Recorded({"squeue --json": ok(bad)})), pytest.raises(SlurmError, match="Invalid"):
        SlurmClient().queue()
    with use_runner(Recorded({"squeue --json": ok("squeue: error: x")})), \
            pytest.raises(SlurmError, match="no JSON"):
        SlurmClient().queue()


def test_cancel_ignores_exit_status_of_finished_jobs() -> None:
    rec = Recorded({"scancel": Completed([], 1, "", "Job has already finished", 0.0)})
    with use_runner(rec):
        SlurmClient().cancel([3, 1, 3])
        SlurmClient().cancel([])
    assert rec.calls == [["scancel", "1", "3"]]


def test_sinfo_json_nodes() -> None:
    with use_runner(Recorded({"sinfo --json": ok(data("sinfo_22.05.json"))})):
        nodes = {n.name: n for n in SlurmClient().nodes()}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert nodes["n1"].usable and nodes["n1"].cpus == 2 and nodes["n1"].address == "10.77.0.11"
    assert not nodes["n2"].usable and nodes["n2"].flags == ("DRAIN",)
    assert nodes["n3"].state == "allocated" and nodes["n3"].usable


def test_scontrol_show_node_records() -> None:
    with use_runner(Recorded({"scontrol show node": ok(data("scontrol_show_node_22.05.txt"))})):
        nodes = {n.name: n for n in SlurmClient().show_nodes()}
    n1, n2, n3 = nodes["n1"], nodes["n2"], nodes["n3"]
    assert n1.state == "idle" and n1.usable and n1.real_memory_mb == 2000
    assert n1.raw["OS"].startswith("Linux 6.1.0-18-amd64 #1 SMP")
    assert n1.raw["CfgTRES"] == "cpu=2,mem=2000M,billing=2" and n1.raw["AllocTRES"] == ""
    assert n2.flags == ("DRAIN",) and n2.reason.startswith("shoal test [root@")
    assert n3.state == "down" and "NOT_RESPONDING" in n3.flags and not n3.usable
    assert n3.reason == "Not responding [slurm@2024-05-29T16:25:12]"


def test_parse_scontrol_record_keeps_spaces_in_values() -> None:
    rec = parse_scontrol_record("NodeName=a OS=Linux 6 #1 SMP State=IDLE Reason=x y [r@t]")
    assert rec == {"NodeName": "a", "OS": "Linux 6 #1 SMP", "State": "IDLE", "Reason": "x y [r@t]"}


def test_version() -> None:
    with use_runner(Recorded({"sinfo --version": ok("slurm 22.05.8\n")})):
        v = SlurmClient().version()
    assert v.release == "22.05.8" and v.major_minor == (22, 5)


def test_unknown_state_does_not_crash() -> None:
    assert JobState.parse("SOMETHING_NEW") is JobState.UNKNOWN
    assert JobState.parse("CANCELLED by 0") is JobState.CANCELLED


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_backoff_grows_and_resets() -> None:
    b = Backoff(initial=1, factor=2, maximum=5)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    b.reset()
    assert b.next() == 1


def test_poll_returns_value_and_times_out() -> None:
    clock = FakeClock()
    answers = iter([None, None, "done"])
    got = poll(lambda: next(answers), timeout=60, backoff=Backoff(1, 2, 10),
               sleep=clock.sleep, clock=clock)
    assert got == "done" and clock.sleeps == [1, 2]
    clock2 = FakeClock()
    with pytest.raises(SlurmError, match="timed out after 5 s"):
        poll(lambda: None, timeout=5, backoff=Backoff(1, 2, 10), sleep=clock2.sleep, clock=clock2)
    assert sum(clock2.sleeps) == pytest.approx(5)


def test_wait_until_all_terminal() -> None:
    running = data("squeue_22.05.json")
    finished = running.replace('"job_state": "RUNNING"', '"job_state": "COMPLETED"')
    rec = Recorded({"squeue --json": [ok(running), ok(finished)]})
    clock = FakeClock()
    with use_runner(rec):
        states = SlurmClient().wait([101, 99], timeout=30, sleep=clock.sleep, clock=clock)
    assert states[101].state is JobState.COMPLETED and len(clock.sleeps) == 1


def test_captured_output_of_a_real_22_05_cluster() -> None:
    rec = Recorded({
        "squeue --json": ok(data("squeue_22.05_captured.json")),
        "sacct --json": ok(data("sacct_22.05_captured.json")),
        "sinfo --json": ok(data("sinfo_22.05_captured.json")),
        "scontrol show node": ok(data("scontrol_show_node_22.05_captured.txt")),
    })
    client = SlurmClient()
    with use_runner(rec):
        queue = {j.job_id: j for j in client.queue()}
        acct = {j.job_id: j for j in client.accounting([1, 2])}
        nodes = client.nodes()
        shown = client.show_nodes()
    assert queue[1].state is JobState.CANCELLED and queue[1].nodes == (
        "node1", "node2", "node3", "node4")
    assert queue[2].state is JobState.PENDING and queue[2].start_time is None
    # 22.05 labels the cancelled job's exit "SUCCESS": the state, not exit_code, decides
    assert acct[1].state is JobState.CANCELLED and acct[2].state is JobState.PENDING
    assert [n.name for n in nodes] == ["node1", "node2", "node3", "node4"]
    assert all(n.flags == ("DRAIN",) and not n.usable for n in nodes)
    assert [n.name for n in shown] == [n.name for n in nodes]
    assert shown[0].reason.startswith("Prolog error") and shown[0].version == "22.05.8"


def test_captured_finished_jobs_of_a_real_22_05_cluster() -> None:
    """COMPLETED, FAILED (exit 3) and TIMEOUT as a real cluster reports them
    (tests/unit/data/capture_slurm.py made these files)."""
    import json

    ids = {k: int(v) for k, v in json.loads(data("jobs_captured.json")).items()}
    rec = Recorded({
        "squeue --json": ok(data("squeue_22.05_jobs_captured.json")),
        "sacct --json": ok(data("sacct_22.05_jobs_captured.json")),
    })
    client = SlurmClient()
    with use_runner(rec):
        queue = {j.job_id: j for j in client.queue()}
        acct = {j.job_id: j for j in client.accounting(ids.values())}
    for want, job_id in ids.items():
        assert queue[job_id].state is JobState(want) and acct[job_id].state is JobState(want)
        assert queue[job_id].state.terminal and queue[job_id].state.ok is (want == "COMPLETED")
        assert queue[job_id].seconds is not None and acct[job_id].nodes == queue[job_id].nodes
    ok_, failed, timeout = (ids[s] for s in ("COMPLETED", "FAILED", "TIMEOUT"))
    assert queue[ok_].exit_code == 0 and acct[ok_].exit_code == 0
    # squeue has the script's exit code; 22.05's sacct says SUCCESS/0 for it, so it is unknown
    assert queue[failed].exit_code == 3 and queue[failed].reason == "NonZeroExitCode"
    assert acct[failed].exit_code is None
    # the time limit ends the script with SIGTERM after --time=1 (one minute)
    assert queue[timeout].signal == 15 and queue[timeout].reason == "TimeLimit"
    seconds = queue[timeout].seconds
    assert seconds is not None and seconds >= 60
