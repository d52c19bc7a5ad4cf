"""Settings of the sandbox: account, credentials, inventory, claim behaviour, throttling and faults.

Everything is a frozen dataclass so a configuration can be shared, printed and compared; the
running sandbox keeps its *mutable* copies of the throttle and fault settings so tests and
benchmarks can change them between phases without restarting the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "API_NAMES",
    "QUOTA_REACHED_MODES",
    "TEST_CREDENTIALS",
    "Credentials",
    "FaultConfig",
    "InventorySpec",
    "SandboxConfig",
    "ThrottleConfig",
]

#: The Connect phone-number APIs the sandbox speaks; throttling and faults are set per API.
API_NAMES: tuple[str, ...] = (
    "ClaimPhoneNumber",
    "DescribePhoneNumber",
    "ListPhoneNumbersV2",
    "ReleasePhoneNumber",
    "SearchAvailablePhoneNumbers",
    "UpdatePhoneNumber",
    "AssociatePhoneNumberContactFlow",
    "DisassociatePhoneNumberContactFlow",
    "ListFlowAssociations",
    "ListContactFlows",
)


@dataclass(frozen=True)
class Credentials:
    """An access key pair the sandbox accepts (SigV4). ``denied`` keys sign correctly but every
    call answers 403 AccessDeniedException, like an IAM principal without connect permissions;
    ``denied_operations`` (API names) answer 403 for those calls only, like a narrower IAM policy
    (e.g. ``connect:ClaimPhoneNumber`` without ``connect:DescribePhoneNumber``)."""

    access_key_id: str
    secret_access_key: str
    denied: bool = False
    denied_operations: frozenset[str] = frozenset()


#: The documented test key pair: a stock client configured with it talks to the sandbox.
TEST_CREDENTIALS = Credentials(
    access_key_id="AKIASANDBOXTESTKEY01",
    secret_access_key="sandbox/secret/key/do-not-use-in-aws00000",
)


@dataclass(frozen=True)
class InventorySpec:
    """A block of available numbers: ``count`` valid numbers of ``country`` starting at ``prefix``."""

    country: str = "US"
    type: str = "DID"
    prefix: str = "+1206"
    count: int = 1000


@dataclass(frozen=True)
class ThrottleConfig:
    """Token bucket of one API: ``rate`` requests per second refill, ``burst`` capacity.
    ``rate=None`` switches throttling off for that API."""

    rate: float | None = 2.0
    burst: int = 5


@dataclass(frozen=True)
class FaultConfig:
    """Seeded fault injection, each probability drawn independently per request.

    - ``error_rate``: 500 InternalServiceException *before* any effect.
    - ``lost_response_rate``: the operation takes effect, then the connection is dropped unanswered.
    - ``stall_rate``/``stall_seconds``: the request sits for ``stall_seconds`` (longer than a client's
      read timeout) and is then executed anyway, as a slow real backend would.
    - ``latency``: added to every request, uniformly drawn from ``(low, high)`` seconds.
    - ``garbage_rate``: the operation takes effect, then a 200 arrives whose body is not the answer
      (empty, truncated JSON or an HTML page), as a proxy or load balancer in the way can send.
    - ``late_answer_rate``/``late_answer_seconds``: the operation takes effect at once, and its answer
      is held back ``late_answer_seconds`` (past a client's timeout): executed, answer late. A client
      that then retries with a *new* token makes a second claim; the same token gets the same answer.
    """

    error_rate: float = 0.0
    lost_response_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    latency: tuple[float, float] = (0.0, 0.0)
    garbage_rate: float = 0.0
    late_answer_rate: float = 0.0
    late_answer_seconds: float = 30.0
    operations: frozenset[str] = frozenset({"ClaimPhoneNumber", "DescribePhoneNumber", "ReleasePhoneNumber",
                                            "UpdatePhoneNumber", "AssociatePhoneNumberContactFlow"})
    seed: int = 0


@dataclass(frozen=True)
class SandboxConfig:
    """Everything a sandbox needs; the defaults mirror the real service's documented defaults."""

    region: str = "us-east-1"
    #: The alternate Region of the traffic distribution groups: requests signed for it are served by
    #: the rules Connect documents for that Region (see ``regions.py``); ``None``: one Region only.
    replica_region: str | None = None
    account_id: str = "123456789012"
    instance_ids: tuple[str, ...] = ("11111111-2222-3333-4444-555555555555",)
    traffic_distribution_group_ids: tuple[str, ...] = ()
    #: Contact flows seeded in each instance (``flows.py``): ids drawn from ``seed``, names "Inbound flow N".
    flows_per_instance: int = 3
    credentials: tuple[Credentials, ...] = (TEST_CREDENTIALS,)
    inventory: tuple[InventorySpec, ...] = (InventorySpec(),)
    inventory_file: str | None = None
    #: Numbers claimed by someone else (another account's instance): never available to us.
    foreign_claims: tuple[str, ...] = ()
    claim_delay: float = 0.5
    claim_failure_rate: float = 0.0
    claim_failure_message: str = "The phone number could not be provisioned."
    #: How long a ClientToken is remembered (not documented for Connect; see the README's table).
    token_lifetime: float = 8 * 3600.0
    release_cooldown: float = 180 * 86400.0
    #: A claim that settles FAILED keeps its number for the claimant this long ("you have one day to
    #: retry claiming the phone number"): our retry with a new token claims it, others cannot.
    failed_claim_reservation: float = 86400.0
    #: Seconds a released number shows IN_PROGRESS (Describe, and List if ``list_releasing``) before
    #: it is gone. The real duration is not documented.
    release_delay: float = 0.5
    #: A claim beyond the phone-number quota: "fail" accepts it and settles it FAILED ("... has reached
    #: its limit of total claimed numbers"), as the real service does; "refuse" answers 402
    #: ServiceQuotaExceededException at once (the sandbox's earlier behaviour).
    quota_reached: str = "fail"
    #: What ListPhoneNumbersV2 shows besides CLAIMED numbers (not documented for Connect).
    list_in_progress: bool = True
    list_failed: bool = False
    list_releasing: bool = True
    #: Seconds before an accepted claim appears in ListPhoneNumbersV2 (eventual consistency).
    listing_lag: float = 0.0
    #: Numbers one instance (or TDG) may hold. The real default is 5 (Service Quotas L-8F812903); the
    #: sandbox plays an account whose quota was raised for a migration. Set 5 to rehearse a fresh one.
    phone_number_quota: int = 10_000
    #: Claims + releases per target within ``churn_window`` beyond ``churn_limit`` x the quota are
    #: refused (ServiceQuotaExceededException), as Connect does until a support case lifts the block.
    churn_limit: float = 2.0
    churn_window: float = 180 * 86400.0
    #: Share of claims of an available number that lose the race to another account just before
    #: ours arrives (the number is then theirs: "not available"), as between a search and a claim.
    competition_rate: float = 0.0
    #: False plays a principal without servicequotas:GetServiceQuota (AccessDeniedException).
    service_quotas_access: bool = True
    throttle: dict[str, ThrottleConfig] = field(default_factory=lambda: {a: ThrottleConfig() for a in API_NAMES})
    faults: FaultConfig = FaultConfig()
    seed: int = 0
    #: Keep (monotonic time, API, outcome) of every request, for benchmark plots.
    record_timeline: bool = False

    def __post_init__(self) -> None:
        if self.quota_reached not in QUOTA_REACHED_MODES:
            raise ValueError(f"quota_reached must be one of {QUOTA_REACHED_MODES}, not {self.quota_reached!r}")


#: ``SandboxConfig.quota_reached``: settle the claim FAILED (the real service), or refuse it (402).
QUOTA_REACHED_MODES = ("fail", "refuse")
