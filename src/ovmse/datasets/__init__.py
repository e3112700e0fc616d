"""Offline datasets: layout (rows <-> episodes), store (write / read / verify), where they are
found (locate), collection, the build recipe, mixing, cards, and OG-MARL interop (ogmarl)."""
