"""Support for testing and benchmarking pgcleave against real servers: an application-like
workload that writes while operations run and proves afterwards that nothing was lost."""
