"""The control API: users submit, list, watch and cancel runs over HTTP, behind a bearer token.

Runs live in Redis (``cfpo.registry``), where the learner and rollout workers claim them; this service only validates,
queues and reports, and reaps runs whose worker stopped heartbeating.
"""
