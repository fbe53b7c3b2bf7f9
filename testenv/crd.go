package main

import (
	"fmt"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsinstall "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/install"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsv1beta1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// decodeCRD reads one CustomResourceDefinition document, strictly. Upstream projects of the
// Istio 1.5 generation published apiextensions.k8s.io/v1beta1 only, which Kubernetes no longer
// serves: such a document is defaulted and converted v1beta1 -> internal -> v1 with the API
// server's own conversions, as a cluster of that time stored it. A v1 CRD cannot keep v1beta1's
// default `preserveUnknownFields: true`, so it is served with pruning against its own schema:
// a field the schema does not describe is reported under fieldValidation=Strict (Istio's own
// validation of that generation rejected unknown fields too). Free-form objects (`type:
// object` with no properties, e.g. a protobuf Struct such as an EnvoyFilter patch value) meant
// "anything" there, so they keep their fields, as Istio's later v1 CRDs mark them; a version
// without any schema keeps every field.
func decodeCRD(doc []byte) (*apiextensionsv1.CustomResourceDefinition, error) {
	var typeMeta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &typeMeta); err != nil {
		return nil, err
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if typeMeta.APIVersion != apiextensionsv1beta1.SchemeGroupVersion.String() {
		return crd, yaml.UnmarshalStrict(doc, crd)
	}
	legacy := &apiextensionsv1beta1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(doc, legacy); err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	apiextensionsinstall.Install(scheme)
	scheme.Default(legacy)
	internal := &apiextensions.CustomResourceDefinition{}
	if err := scheme.Convert(legacy, internal, nil); err != nil {
		return nil, fmt.Errorf("convert %s from v1beta1: %w", legacy.Name, err)
	}
	if err := scheme.Convert(internal, crd, nil); err != nil {
		return nil, fmt.Errorf("convert %s to v1: %w", legacy.Name, err)
	}
	crd.TypeMeta = metav1.TypeMeta{APIVersion: apiextensionsv1.SchemeGroupVersion.String(), Kind: "CustomResourceDefinition"}
	crd.Spec.PreserveUnknownFields = false
	for i := range crd.Spec.Versions {
		v := &crd.Spec.Versions[i]
		if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			v.Schema = &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object"}}
		}
		keepFreeFormFields(v.Schema.OpenAPIV3Schema, true)
	}
	return crd, nil
}

// keepFreeFormFields marks every object schema in s that describes no fields as keeping the
// fields it is given. The root's `metadata` is the API server's ObjectMeta, never free-form.
func keepFreeFormFields(s *apiextensionsv1.JSONSchemaProps, root bool) {
	if s.Type == "object" && len(s.Properties) == 0 && s.AdditionalProperties == nil && s.XPreserveUnknownFields == nil {
		keep := true
		s.XPreserveUnknownFields = &keep
	}
	for name, property := range s.Properties {
		if root && name == "metadata" {
			continue
		}
		keepFreeFormFields(&property, false)
		s.Properties[name] = property
	}
	if s.Items != nil && s.Items.Schema != nil {
		keepFreeFormFields(s.Items.Schema, false)
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		keepFreeFormFields(s.AdditionalProperties.Schema, false)
	}
}
