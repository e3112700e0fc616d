"""Offline datasets: layout (rows <-> episodes), store (write / read / verify), collection,
the build recipe, mixing, cards, and loading into the learner's episode buffer."""
