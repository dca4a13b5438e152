"""Plain data and its validation: servers, comm paths, resources, instances, dependencies,
hierarchies, states, priorities. No I/O."""
