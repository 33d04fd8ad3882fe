"""A contract fake of the GitHub API for loopgate's tests.

    with GitHubFake.running(repos={"acme/shop": repo_path}) as fake:
        gi = GithubIntegration(auth=Auth.AppAuth(fake.app_id, fake.private_key_pem), base_url=fake.url)
        ...
        fake.assert_no_violations()

Every REST request is checked against GitHub's REST description (npm @octokit/openapi), every GraphQL
document against GitHub's GraphQL schema (npm @octokit/graphql-schema), every response against its schema.
`webhooks` loads, adapts, validates, signs and delivers the published webhook examples
(@octokit/webhooks-examples, validated with @octokit/webhooks-schemas). The packages are pinned in
`tests/contracts/` and installed there by `make contracts`; `$LOOPGATE_CONTRACTS_DIR` may name another
`node_modules` that has them.
"""

from tests.github_fake.contract import CONTRACTS_ENV, OpenAPIContract, contracts_dir, load_contract
from tests.github_fake.server import GitHubFake, RecordedRequest, Violation
from tests.github_fake.state import CheckRun, FakeState, IssueComment, IssueEvent, Pull, Repo, Status

__all__ = [
    "CONTRACTS_ENV",
    "CheckRun",
    "FakeState",
    "GitHubFake",
    "IssueComment",
    "IssueEvent",
    "OpenAPIContract",
    "Pull",
    "RecordedRequest",
    "Repo",
    "Status",
    "Violation",
    "contracts_dir",
    "load_contract",
]
