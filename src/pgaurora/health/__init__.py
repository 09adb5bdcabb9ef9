"""Health monitor: probe every node, decide, act (promote, re-point, fence), publish the topology."""
