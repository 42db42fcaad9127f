"""Property tests: random requests drawn from the table's own values (and some bad ones)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stack import (
    GpuDevice,
    OsInfo,
    StackError,
    StackPlan,
    StackRequest,
    default_stack_table,
    resolve_stack,
)
from autoglm_infra.stack.facts_table import parse_version

TABLE = default_stack_table()
NVIDIA = "0x10de"
BLACKWELL_IDS = [g.pci_device for g in TABLE.gpus if g.architecture == "blackwell"]
PRE_TURING_IDS = [g.pci_device for g in TABLE.gpus if parse_version(g.compute_capability) < (7, 5)]
BRANCHES = sorted(b.branch for b in TABLE.driver_branches)
PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

known_gpus = st.sampled_from([GpuDevice(NVIDIA, g.pci_device) for g in TABLE.gpus])
odd_gpus = st.one_of(
    st.integers(min_value=0, max_value=0xFFFF).map(lambda n: GpuDevice(NVIDIA, f"0x{n:04x}")),
    st.just(GpuDevice("0x8086", "0x56c0")),  # an Intel GPU: ignored
    st.text(max_size=6).map(lambda s: GpuDevice(NVIDIA, s)),  # garbage id
)
os_infos = st.one_of(
    st.sampled_from([OsInfo(o.distro, o.version, o.arch) for o in TABLE.os_targets]),
    st.sampled_from(
        [
            OsInfo("ubuntu", "20.04", "x86_64"),
            OsInfo("debian", "12", "aarch64"),
            OsInfo("rocky", "9", "x86_64"),
            OsInfo("ubuntu", "24.04", "ppc64le"),
        ]
    ),
)
branches = st.sampled_from(["auto", *map(str, BRANCHES), "545", "r580", "", "latest"])
flavours = st.sampled_from(["auto", "open", "proprietary", "closed"])
cudas = st.sampled_from(["auto", *(c.version for c in TABLE.cuda_toolkits), "11.8", "12"])
cudnns = st.sampled_from(["auto", "none", "9", *(c.version for c in TABLE.cudnn), "8", "9.x"])
engines = st.sampled_from([*(e.name for e in TABLE.engines), "tgi"])
engine_versions = st.sampled_from(["auto", *(e.version for e in TABLE.engines), "0.99.0", ""])
LOCKS = DEFAULT_LOCKS_DIR
# A fixed day, so that end-of-life warnings are part of the deterministic outcome.
TODAY = datetime.date(2026, 12, 4)
todays = st.sampled_from([TODAY, datetime.date(2026, 1, 15), datetime.date(2030, 1, 1)])


@st.composite
def requests(draw: st.DrawFn, gpus: st.SearchStrategy[GpuDevice] = known_gpus) -> StackRequest:
    """Any mix of table values, typos and unsupported targets."""
    return StackRequest(
        os=draw(os_infos),
        gpus=tuple(draw(st.lists(gpus, max_size=3))),
        driver_branch=draw(branches),
        driver_flavour=draw(flavours),
        cuda_version=draw(cudas),
        cudnn_version=draw(cudnns),
        engine=draw(engines),
        engine_version=draw(engine_versions),
        today=draw(todays),
    )


def auto_or(values: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just("auto"), st.sampled_from(values))


@st.composite
def table_requests(draw: st.DrawFn) -> StackRequest:
    """Only values the table lists (auto often), so most requests resolve to a plan."""
    return StackRequest(
        os=draw(st.sampled_from([OsInfo(o.distro, o.version, o.arch) for o in TABLE.os_targets])),
        gpus=tuple(draw(st.lists(known_gpus, max_size=2))),
        driver_branch=draw(auto_or([str(b) for b in BRANCHES])),
        driver_flavour=draw(auto_or(["open", "proprietary"])),
        cuda_version=draw(auto_or([c.version for c in TABLE.cuda_toolkits])),
        cudnn_version=draw(auto_or(["none", "9", *(c.version for c in TABLE.cudnn)])),
        engine=draw(st.sampled_from([e.name for e in TABLE.engines])),
        engine_version=draw(auto_or([e.version for e in TABLE.engines])),
        today=draw(todays),
    )


@dataclass(frozen=True)
class Outcome:
    plan: StackPlan | None
    error: str | None


def outcome(request: StackRequest) -> Outcome:
    """Resolve; any exception other than StackError propagates and fails the test."""
    try:
        return Outcome(resolve_stack(request, TABLE), None)
    except StackError as exc:
        assert str(exc), "a StackError must explain itself"
        return Outcome(None, str(exc))


def cc_of(device: GpuDevice) -> tuple[int, ...] | None:
    model = TABLE.gpu(device.pci_device) if device.pci_vendor == NVIDIA else None
    return None if model is None else parse_version(model.compute_capability)


def check_plan_invariants(request: StackRequest, plan: StackPlan) -> None:
    driver = parse_version(plan.driver_version)
    cuda = TABLE.cuda(plan.cuda_version)
    assert cuda is not None
    assert driver >= parse_version(cuda.min_driver)

    release = TABLE.torch_release(plan.torch_version)
    assert release is not None
    flavour = release.flavour(plan.torch_flavour)
    assert flavour is not None, "the torch flavour must exist for the engine's torch"
    wheel_cuda = TABLE.cuda(flavour.cuda)
    assert wheel_cuda is not None
    assert driver >= parse_version(wheel_cuda.min_driver)

    ccs = [cc for cc in map(cc_of, request.gpus) if cc is not None]
    if plan.driver_flavour == "open":
        assert all(cc >= (7, 5) for cc in ccs)
    if any(d.pci_device in BLACKWELL_IDS for d in request.gpus if d.pci_vendor == NVIDIA):
        assert plan.driver_flavour == "open"

    names = [p.name for p in (*plan.driver_packages, *plan.cuda_packages, *plan.cudnn_packages)]
    assert set(plan.hold_packages) == set(names)
    assert plan.repo_url.endswith("/")
    branch = TABLE.branch(plan.driver_branch)
    assert branch is not None and branch.version == plan.driver_version
    assert all(
        p.version.startswith(plan.driver_version) or p.name.startswith("nvidia-driver-pinning-")
        for p in plan.driver_packages
    )

    engine = TABLE.engine(plan.engine, plan.engine_version)
    assert engine is not None and engine.torch_version == plan.torch_version
    if request.engine_version == "auto":
        candidates = [e for e in TABLE.engine_releases(plan.engine) if e.default_candidate]
        assert engine in candidates or not candidates
    else:
        assert plan.engine_version == request.engine_version
    if plan.lock_profile:  # the python stage can install what the plan names
        assert (LOCKS / f"{plan.lock_profile}.txt").is_file()
    # end of life: a plan on a branch past its month always says so, with the month
    today = request.today or TODAY
    if branch.eol is not None:
        year, month = map(int, branch.eol.split("-"))
        ended = (today.year, today.month) > (year, month)
        month_name = datetime.date(year, month, 1).strftime("%B %Y")
        said = [w for w in plan.warnings if f"driver branch {branch.branch} " in w]
        assert bool(said) == ended
        assert all(month_name in w for w in said)


@PROPERTY_SETTINGS
@given(st.one_of(table_requests(), requests()))
def test_every_plan_is_consistent_and_failures_are_stack_errors(request: StackRequest) -> None:
    result = outcome(request)
    if result.plan is not None:
        check_plan_invariants(request, result.plan)


def test_table_requests_mostly_resolve() -> None:
    """Guard against vacuous properties: the plan invariants must actually be exercised."""
    plans: list[StackPlan] = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(table_requests())
    def collect(request: StackRequest) -> None:
        result = outcome(request)
        if result.plan is not None:
            plans.append(result.plan)

    collect()
    assert len(plans) >= 30
    assert {p.driver_flavour for p in plans} == {"open", "proprietary"}
    assert len({p.driver_branch for p in plans}) >= 3


@PROPERTY_SETTINGS
@given(requests(gpus=st.one_of(known_gpus, odd_gpus)))
def test_odd_devices_never_raise_anything_but_stack_error(request: StackRequest) -> None:
    result = outcome(request)
    if result.plan is not None:
        check_plan_invariants(request, result.plan)


@PROPERTY_SETTINGS
@given(st.one_of(table_requests(), requests()))
def test_resolution_is_deterministic(request: StackRequest) -> None:
    assert outcome(request) == outcome(request)


@PROPERTY_SETTINGS
@given(requests(), st.sampled_from(BLACKWELL_IDS))
def test_blackwell_on_a_pre_570_branch_is_always_refused(
    request: StackRequest, blackwell: str
) -> None:
    old = [b for b in TABLE.driver_branches if "blackwell" not in b.architectures]
    for branch in old:
        bad = StackRequest(
            os=request.os,
            gpus=(*request.gpus, GpuDevice(NVIDIA, blackwell)),
            driver_branch=str(branch.branch),
            driver_flavour=request.driver_flavour,
            cuda_version=request.cuda_version,
            cudnn_version=request.cudnn_version,
            engine=request.engine,
            engine_version=request.engine_version,
        )
        assert outcome(bad).error is not None


@PROPERTY_SETTINGS
@given(requests(), st.sampled_from(PRE_TURING_IDS))
def test_pre_turing_gpus_with_open_modules_are_always_refused(
    request: StackRequest, old_gpu: str
) -> None:
    bad = StackRequest(
        os=request.os,
        gpus=(*request.gpus, GpuDevice(NVIDIA, old_gpu)),
        driver_branch=request.driver_branch,
        driver_flavour="open",
        cuda_version=request.cuda_version,
        cudnn_version=request.cudnn_version,
        engine=request.engine,
        engine_version=request.engine_version,
    )
    assert outcome(bad).error is not None


@PROPERTY_SETTINGS
@given(requests(), st.sampled_from(PRE_TURING_IDS))
def test_pre_turing_gpus_on_branches_after_580_are_always_refused(
    request: StackRequest, old_gpu: str
) -> None:
    for branch in (b for b in BRANCHES if b > 580):
        bad = StackRequest(
            os=request.os,
            gpus=(GpuDevice(NVIDIA, old_gpu), *request.gpus),
            driver_branch=str(branch),
            driver_flavour=request.driver_flavour,
            cuda_version=request.cuda_version,
            cudnn_version=request.cudnn_version,
            engine=request.engine,
            engine_version=request.engine_version,
        )
        assert outcome(bad).error is not None


@PROPERTY_SETTINGS
@given(requests())
def test_an_explicit_branch_below_the_cuda_minimum_is_always_refused(
    request: StackRequest,
) -> None:
    for cuda in TABLE.cuda_toolkits:
        for branch in TABLE.driver_branches:
            if parse_version(branch.version) >= parse_version(cuda.min_driver):
                continue
            bad = StackRequest(
                os=request.os,
                gpus=request.gpus,
                driver_branch=str(branch.branch),
                driver_flavour=request.driver_flavour,
                cuda_version=cuda.version,
                cudnn_version=request.cudnn_version,
                engine=request.engine,
                engine_version=request.engine_version,
            )
            assert outcome(bad).error is not None


@PROPERTY_SETTINGS
@given(requests(), st.sampled_from(list(TABLE.engines)))
def test_an_explicit_release_on_a_branch_below_all_its_wheels_is_always_refused(
    request: StackRequest, engine: object
) -> None:
    """Minimum-driver refusal for every engine release and flavour in the table."""
    from autoglm_infra.stack.facts_table import Engine

    assert isinstance(engine, Engine)
    release = TABLE.torch_release(engine.torch_version)
    assert release is not None
    lowest = min(
        parse_version(TABLE.cuda(f.cuda).min_driver)  # type: ignore[union-attr]
        for f in release.flavours
        if engine.flavour(f.name) is not None
    )
    for branch in TABLE.driver_branches:
        if parse_version(branch.version) >= lowest:
            continue
        bad = StackRequest(
            os=request.os,
            gpus=request.gpus,
            driver_branch=str(branch.branch),
            driver_flavour=request.driver_flavour,
            cudnn_version=request.cudnn_version,
            engine=engine.name,
            engine_version=engine.version,
            today=TODAY,
        )
        assert outcome(bad).error is not None
