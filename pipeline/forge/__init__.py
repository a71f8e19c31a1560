"""A forge client: pull requests on GitHub, GitHub Enterprise Server, Gitea and Forgejo, through the REST API
they share. Nothing of Prefect, DVC or git: pipeline.retrain.pull_request says what to open and when.

- `address`: a project (the forge's web address, owner, name) from a git remote URL, its API where the host
  says it, and whether a token may go there (https only, loopback aside; a token a header can carry). Pure.
- `transport`: one HTTP exchange, bounded whatever the other end does (a deadline for the whole call, a byte cap,
  same-origin redirects only), and ForgeError, whose words are cut, cleaned and never hold the token.
- `client`: `api_base` (asked without the token) and `Forge`: find our open pull request, open or update
  it, label it; every answer read for its shape.

The token travels in the Authorization header to the API's own origin and nowhere else.
"""
