"""Failover drills: a workload through the endpoints, faults, measures, a consistency check and a report."""
