"""Operations shared by the stages and the pipeline (image drawing, ...): no stage, no Ray."""
