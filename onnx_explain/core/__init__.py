"""The runtime's core, shared by every other layer (the exporter included): what an explanation graph says
about itself (metadata), the checks at the API edge (inputs), what a method returns (result), graph
building (graph), execution providers and progress bars.  It imports nothing else of the project."""

__version__ = "0.2.0"
