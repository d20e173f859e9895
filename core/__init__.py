"""The small core every stage may import: errors, items, seeding, devices, weights, the stage
contract and the config spec. It imports nothing from :mod:`vid2pair.pipeline` or the stages."""
