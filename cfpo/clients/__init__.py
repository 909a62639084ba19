"""HTTP clients of the services, shared by the services, the learner and the operator's tools."""
