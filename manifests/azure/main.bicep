// dynamic-sessions-mcp on Azure Container Apps, in front of an Azure Container Apps session pool.
//
// Creates: a session pool (Python code interpreter by default), a user-assigned managed identity
// holding the "Azure ContainerApps Session Executor" role on that pool, a Container Apps
// environment (with a Log Analytics workspace), and a Container App running the bridge image with
// that identity, inbound API keys, a shared session secret, and health/readiness probes.
//
//   az deployment group create -g <rg> -f manifests/azure/main.bicep \
//     -p image=<registry>/dynamic-sessions-mcp:0.1.0 apiKeys='foundry-agent:<key>' \
//        sessionSecret="$(openssl rand -base64 32)"

targetScope = 'resourceGroup'

@description('Azure region for every resource. Session pools exist in a subset of regions.')
param location string = resourceGroup().location

@description('Prefix for resource names (letters, digits and hyphens).')
@minLength(3)
@maxLength(20)
param namePrefix string = 'dsmcp'

@description('The bridge image, e.g. myregistry.azurecr.io/dynamic-sessions-mcp:0.1.0.')
param image string

@description('Registry server to pull the image from with the managed identity (needs AcrPull); empty for a public image.')
param registryServer string = ''

@description('Session pool container type: PythonLTS (stateful Python) or Shell.')
@allowed([
  'PythonLTS'
  'Shell'
])
param poolContainerType string = 'PythonLTS'

@description('Most sessions (sandboxes) alive at once in the pool.')
@minValue(1)
@maxValue(600)
param maxConcurrentSessions int = 50

@description('Sessions kept warm for fast starts.')
@minValue(0)
param readySessionInstances int = 5

@description('Idle seconds before the pool destroys a session.')
@minValue(300)
@maxValue(3600)
param cooldownPeriodInSeconds int = 300

@description('Inbound API keys for the bridge: name:key[,name2:key2]. The name is the caller.')
@secure()
param apiKeys string

@description('HMAC secret shared by all replicas (32 random bytes or more, e.g. openssl rand -base64 32).')
@secure()
param sessionSecret string

@description('Bridge replicas.')
@minValue(1)
param minReplicas int = 1

@maxValue(30)
param maxReplicas int = 5

var sessionExecutorRoleId = '0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0' // Azure ContainerApps Session Executor
var appName = '${namePrefix}-bridge'
var poolType = poolContainerType == 'Shell' ? 'shell' : 'python'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-identity'
  location: location
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${namePrefix}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource pool 'Microsoft.App/sessionPools@2025-01-01' = {
  name: '${namePrefix}-pool'
  location: location
  properties: {
    containerType: poolContainerType
    poolManagementType: 'Dynamic'
    scaleConfiguration: {
      maxConcurrentSessions: maxConcurrentSessions
      readySessionInstances: readySessionInstances
    }
    dynamicPoolConfiguration: {
      lifecycleConfiguration: {
        lifecycleType: 'Timed'
        cooldownPeriodInSeconds: cooldownPeriodInSeconds
      }
    }
    sessionNetworkConfiguration: {
      status: 'EgressDisabled'
    }
  }
}

resource executorRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(pool.id, identity.id, sessionExecutorRoleId)
  scope: pool
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sessionExecutorRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

var publicHost = '${appName}.${environment.properties.defaultDomain}'

resource bridge 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8000
        transport: 'http'
        allowInsecure: false
      }
      registries: empty(registryServer) ? [] : [
        {
          server: registryServer
          identity: identity.id
        }
      ]
      secrets: [
        {
          name: 'api-keys'
          value: apiKeys
        }
        {
          name: 'session-secret'
          value: sessionSecret
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'bridge'
          image: image
          args: [
            '--transport'
            'http'
          ]
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          env: [
            { name: 'DSMCP_POOL_ENDPOINT', value: pool.properties.poolManagementEndpoint }
            { name: 'DSMCP_POOL_TYPE', value: poolType }
            { name: 'DSMCP_POOL_AUTH', value: 'entra' }
            { name: 'DSMCP_MANAGED_IDENTITY_CLIENT_ID', value: identity.properties.clientId }
            { name: 'DSMCP_AUTH', value: 'api-key' }
            { name: 'DSMCP_API_KEYS', secretRef: 'api-keys' }
            { name: 'DSMCP_SESSION_SECRET', secretRef: 'session-secret' }
            { name: 'DSMCP_HOST', value: '0.0.0.0' }
            { name: 'DSMCP_PORT', value: '8000' }
            { name: 'DSMCP_PUBLIC_URL', value: 'https://${publicHost}' }
            { name: 'DSMCP_ALLOWED_HOSTS', value: publicHost }
            // Container Apps ingress has no affinity on Mcp-Session-Id: serve 2025-era clients statelessly.
            { name: 'DSMCP_STATELESS_HTTP', value: 'true' }
            { name: 'DSMCP_LOG_FORMAT', value: 'json' }
          ]
          probes: [
            {
              type: 'Startup'
              httpGet: { path: '/healthz', port: 8000 }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Liveness'
              httpGet: { path: '/healthz', port: 8000 }
              periodSeconds: 10
            }
            {
              type: 'Readiness'
              httpGet: { path: '/readyz', port: 8000 }
              periodSeconds: 10
              timeoutSeconds: 6
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http'
            http: {
              metadata: {
                concurrentRequests: '50'
              }
            }
          }
        ]
      }
    }
  }
  dependsOn: [
    executorRole
  ]
}

@description('The MCP endpoint for clients (send an API key as Authorization: Bearer or X-API-Key).')
output mcpUrl string = 'https://${publicHost}/mcp'

@description('The pool management endpoint (DSMCP_POOL_ENDPOINT).')
output poolManagementEndpoint string = pool.properties.poolManagementEndpoint

@description('Client id of the managed identity that holds Session Executor on the pool.')
output identityClientId string = identity.properties.clientId
