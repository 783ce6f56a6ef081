"""The experiments built on the core library: sweeps and comparison runners, the fair-comparison protocol and
the verdicts that tell an effect from noise. Imports the core, never the course tooling."""
