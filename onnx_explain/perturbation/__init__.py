"""Pure-inference methods around any ONNX classifier (occlusion, RISE, Score-, Eigen- and Ablation-CAM):
each builds one ONNX graph around the user's model and runs it with ONNX Runtime."""
